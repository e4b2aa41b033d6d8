/* Integer GRU and LSTM (runtime/kernels/rnn.py = linger/iqrnn.py), PyTorch gate order.
 * Gate pre-activations int16 Q11, gate outputs Q15, hidden state at exp_h = bits_h - 1, LSTM
 * cell int16 Q11:
 *   GRU   r, z = sig(sat16(gi + gh)); n = tanh(sat16(gi_n + rs(r gh_n, 15)))
 *         h' = sat_h(rs((2**15 - z) n + z (h << (15 - exp_h)), 30 - exp_h))
 *   LSTM  i, f, g, o = sig, sig, tanh, sig of sat16(gi + gh)
 *         c' = sat16(rs((f c << 4) + i g, 19)); h' = sat_h(rs(o tanh(c'), 30 - exp_h))
 * with gi = sat16(rs(x W_ih^T + b_ih, exp_in + exp_wih - 11)), gh likewise from h.
 * A sequence with length <= t keeps its state and outputs 0 at step t; the reverse direction
 * reads each sequence from its own last valid step back. Inputs: X, lengths, h0[, c0], then per
 * layer and direction W_ih, W_hh[, B_ih, B_hh]. Scratch (int32): layer outputs, states, gates,
 * one input row. */
#include "le_internal.h"
#include "le_tables.h"

typedef struct {
    int lstm;
    int64_t hs, layers, dirs, batch_first, bias, g;     /* g: gates (3 or 4) */
    int64_t exp_x, bits_x, bits_w, exp_h, bits_h;
    int64_t steps, n, f;
    const uint8_t *exp_w;
    uint32_t head;
    le_tensor x, lengths, h0, c0, y, hn, cn;
    int has_len, has_h0, has_c0, has_y, has_hn, has_cn;
} rnn;

static le_status setup(le_op *op, int lstm, rnn *r) {
    int64_t v, per, k;
    uint32_t ne;
    memset(r, 0, sizeof *r);
    r->lstm = lstm;
    r->g = lstm ? 4 : 3;
    r->head = lstm ? 4 : 3;
    LE_CHECK(le_req_int(op, "hidden_size", 1, 1 << 20, &r->hs));
    LE_CHECK(le_req_int(op, "num_layers", 1, 64, &r->layers));
    LE_CHECK(le_req_int(op, "bidirectional", 0, 1, &v));
    r->dirs = v ? 2 : 1;
    LE_CHECK(le_req_int(op, "batch_first", INT64_MIN, INT64_MAX, &r->batch_first));
    LE_CHECK(le_req_int(op, "has_bias", INT64_MIN, INT64_MAX, &r->bias));
    LE_CHECK(le_exp(op, "exp_x", &r->exp_x));
    LE_CHECK(le_bits(op, "bits_x", 16, &r->bits_x));
    LE_CHECK(le_bits(op, "bits_w", 16, &r->bits_w));
    LE_CHECK(le_exp(op, "exp_h", &r->exp_h));
    LE_CHECK(le_bits(op, "bits_h", 16, &r->bits_h));
    LE_REQUIRE(r->exp_h == r->bits_h - 1, LE_ERR_ATTR);
    if (lstm) {
        int64_t ec, bc;
        LE_CHECK(le_req_int(op, "exp_c", LE_CELL_Q, LE_CELL_Q, &ec));
        LE_CHECK(le_req_int(op, "bits_c", LE_CELL_BITS, LE_CELL_BITS, &bc));
    }
    LE_REQUIRE(le_attr_ints(op, "exp_w", &r->exp_w, &ne) == 1
               && ne == 2 * r->layers * r->dirs, LE_ERR_ATTR);
    for (k = 0; k < (int64_t)ne; k++) {
        v = le_rds64(r->exp_w + 8 * k);
        LE_REQUIRE(v >= -LE_MAX_EXP && v <= LE_MAX_EXP, LE_ERR_ATTR);
    }
    per = r->bias ? 4 : 2;
    LE_REQUIRE(op->n_in == r->head + r->layers * r->dirs * per, LE_ERR_SHAPE);
    LE_REQUIRE(le_in(op, 0, &r->x) && r->x.dtype == le_int_dtype(r->bits_x) && r->x.ndim == 3,
               LE_ERR_SHAPE);
    r->steps = r->batch_first ? r->x.dims[1] : r->x.dims[0];
    r->n = r->batch_first ? r->x.dims[0] : r->x.dims[1];
    r->f = r->x.dims[2];
    r->has_len = le_in(op, 1, &r->lengths);
    if (r->has_len)
        LE_REQUIRE(r->lengths.ndim == 1 && r->lengths.dims[0] == r->n
                   && (r->lengths.dtype == LE_INT8 || r->lengths.dtype == LE_INT16
                       || r->lengths.dtype == LE_INT32 || r->lengths.dtype == LE_INT64
                       || r->lengths.dtype == LE_UINT8 || r->lengths.dtype == LE_UINT16
                       || r->lengths.dtype == LE_UINT32), LE_ERR_SHAPE);
    r->has_h0 = le_in(op, 2, &r->h0);
    r->has_c0 = lstm && le_in(op, 3, &r->c0);
    {
        le_tensor st;
        int64_t dims[3];
        dims[0] = r->layers * r->dirs;
        dims[1] = r->n;
        dims[2] = r->hs;
        for (k = 0; k < 2; k++) {
            const le_tensor *t = k == 0 ? &r->h0 : &r->c0;
            int has = k == 0 ? r->has_h0 : r->has_c0;
            int32_t dt = k == 0 ? le_int_dtype(r->bits_h) : LE_INT16;
            if (!has) continue;
            LE_REQUIRE(t->dtype == dt && t->ndim == 3 && t->dims[0] == dims[0]
                       && t->dims[1] == dims[1] && t->dims[2] == dims[2], LE_ERR_SHAPE);
        }
        r->has_y = le_out(op, 0, &r->y);
        r->has_hn = le_out(op, 1, &r->hn);
        r->has_cn = lstm && le_out(op, 2, &r->cn);
        LE_REQUIRE(op->n_out <= (uint32_t)(lstm ? 3 : 2), LE_ERR_SHAPE);
        if (r->has_y)
            LE_REQUIRE(r->y.dtype == le_int_dtype(r->bits_h) && r->y.ndim == 3
                       && r->y.dims[0] == r->x.dims[0] && r->y.dims[1] == r->x.dims[1]
                       && r->y.dims[2] == r->dirs * r->hs, LE_ERR_SHAPE);
        for (k = 0; k < 2; k++) {
            const le_tensor *t = k == 0 ? &r->hn : &r->cn;
            int has = k == 0 ? r->has_hn : r->has_cn;
            int32_t dt = k == 0 ? le_int_dtype(r->bits_h) : LE_INT16;
            if (!has) continue;
            LE_REQUIRE(t->dtype == dt && t->ndim == 3 && t->dims[0] == dims[0]
                       && t->dims[1] == dims[1] && t->dims[2] == dims[2], LE_ERR_SHAPE);
        }
        for (k = 0; k < r->layers * r->dirs; k++) {
            int64_t fin = k < r->dirs ? r->f : r->dirs * r->hs, j;
            uint32_t base = r->head + (uint32_t)(k * per);
            LE_REQUIRE(le_in(op, base, &st) && st.dtype == le_int_dtype(r->bits_w)
                       && st.ndim == 2 && st.dims[0] == r->g * r->hs && st.dims[1] == fin,
                       LE_ERR_SHAPE);
            LE_REQUIRE(le_in(op, base + 1, &st) && st.dtype == le_int_dtype(r->bits_w)
                       && st.ndim == 2 && st.dims[0] == r->g * r->hs && st.dims[1] == r->hs,
                       LE_ERR_SHAPE);
            for (j = 2; j < per; j++)
                LE_REQUIRE(le_in(op, base + (uint32_t)j, &st) && st.dtype == LE_INT32
                           && st.ndim == 1 && st.dims[0] == r->g * r->hs, LE_ERR_SHAPE);
        }
    }
    {
        /* scratch in int32: layer outputs (two when layers > 1), h, c, gi, gh, h', c' rows */
        int64_t seq = r->steps * r->n * r->dirs * r->hs;
        int64_t words = (r->layers > 1 ? 2 : 1) * seq + 2 * r->n * r->hs + 2 * r->g * r->hs
                        + 2 * r->hs + r->f;
        op->scratch = (size_t)words * 4;
    }
    return LE_OK;
}

/* in . W[row] in int64 for int8 or int16 W (the weight dtypes; |in| <= 2**15) */
static int64_t dot_row(const int32_t *in, const le_tensor *w, int64_t row, int64_t fin) {
    int64_t acc = 0, i = 0;
    if (w->dtype == LE_INT8) {
        /* |in * W| <= 2**22: up to 256 products sum exactly in int32; runs of 16 with a fixed
         * trip count, which compilers vectorize at -O2 */
        const int8_t *wr = (const int8_t *)w->data + row * fin;
        int32_t s;
        int j;
        while (i + 16 <= fin) {
            int64_t stop = fin - i > 256 ? i + 256 : fin;
            for (s = 0; i + 16 <= stop; i += 16)
                for (j = 0; j < 16; j++) s += in[i + j] * wr[i + j];
            acc += s;
        }
        for (s = 0; i < fin; i++) s += in[i] * wr[i];
        return acc + s;
    }
    {
        const int16_t *wr = (const int16_t *)(const void *)w->data + row * fin;
        for (; i < fin; i++) acc += (int64_t)in[i] * wr[i];
    }
    return acc;
}

/* out[j] = sat16(rs(in . W[j] + b[j], shift)) for the g*hs gate rows */
static void gates(const int32_t *in, int64_t fin, const le_tensor *w, const le_tensor *b,
                  int64_t rows, int64_t shift, int32_t *out) {
    int64_t j;
    for (j = 0; j < rows; j++)
        out[j] = (int32_t)le_requant((b ? le_ld(b, j) : 0) + dot_row(in, w, j, fin), shift, 16);
}

static le_status run(le_op *op, int lstm) {
    rnn r;
    int64_t per, seq, l, d, t, n, j, i;
    int32_t *ybuf[2], *h, *c, *gi, *gh, *hnew, *cnew, *xrow;
    LE_CHECK(setup(op, lstm, &r));
    if (!op->run) return LE_OK;
    per = r.bias ? 4 : 2;
    seq = r.steps * r.n * r.dirs * r.hs;
    ybuf[0] = (int32_t *)(void *)op->m->scratch;
    ybuf[1] = r.layers > 1 ? ybuf[0] + seq : ybuf[0];
    h = ybuf[0] + (r.layers > 1 ? 2 : 1) * seq;
    c = h + r.n * r.hs;
    gi = c + r.n * r.hs;
    gh = gi + r.g * r.hs;
    hnew = gh + r.g * r.hs;
    cnew = hnew + r.hs;
    xrow = cnew + r.hs;
    if (r.has_len)
        for (n = 0; n < r.n; n++) {
            int64_t len = le_ld(&r.lengths, n);
            if (r.lengths.dtype == LE_UINT64 || len < 0 || len > r.steps) return LE_ERR_INPUT;
        }
    for (l = 0; l < r.layers; l++) {
        int32_t *yout = ybuf[l % 2];
        const int32_t *yin = l > 0 ? ybuf[(l - 1) % 2] : NULL;
        int64_t fin = l == 0 ? r.f : r.dirs * r.hs, exp_in = l == 0 ? r.exp_x : r.exp_h;
        for (d = 0; d < r.dirs; d++) {
            int64_t k = l * r.dirs + d;
            uint32_t base = r.head + (uint32_t)(k * per);
            le_tensor wih, whh, bih, bhh;
            int64_t ewih = le_rds64(r.exp_w + 16 * k), ewhh = le_rds64(r.exp_w + 16 * k + 8);
            le_in(op, base, &wih);
            le_in(op, base + 1, &whh);
            if (r.bias) {
                le_in(op, base + 2, &bih);
                le_in(op, base + 3, &bhh);
            }
            for (n = 0; n < r.n; n++)
                for (j = 0; j < r.hs; j++) {
                    int64_t at = (k * r.n + n) * r.hs + j;
                    h[n * r.hs + j] = r.has_h0 ? (int32_t)le_ld(&r.h0, at) : 0;
                    c[n * r.hs + j] = r.has_c0 ? (int32_t)le_ld(&r.c0, at) : 0;
                }
            for (t = 0; t < r.steps; t++)
                for (n = 0; n < r.n; n++) {
                    int64_t len = r.has_len ? le_ld(&r.lengths, n) : r.steps;
                    int64_t tt = (d == 1 && t < len) ? len - 1 - t : t;
                    int32_t *hr = h + n * r.hs, *cr = c + n * r.hs;
                    int32_t *yrow = yout + (tt * r.n + n) * r.dirs * r.hs + d * r.hs;
                    if (t >= len) {
                        for (j = 0; j < r.hs; j++) yrow[j] = 0;
                        continue;
                    }
                    /* input gates of row (tt, n) */
                    if (l == 0) {
                        int64_t off = r.batch_first ? (n * r.steps + tt) * r.f : (tt * r.n + n) * r.f;
                        for (i = 0; i < fin; i++) xrow[i] = (int32_t)le_ld(&r.x, off + i);
                        gates(xrow, fin, &wih, r.bias ? &bih : NULL, r.g * r.hs,
                              exp_in + ewih - LE_GATE_Q, gi);
                    } else {
                        gates(yin + (tt * r.n + n) * fin, fin, &wih, r.bias ? &bih : NULL,
                              r.g * r.hs, exp_in + ewih - LE_GATE_Q, gi);
                    }
                    gates(hr, r.hs, &whh, r.bias ? &bhh : NULL, r.g * r.hs,
                          r.exp_h + ewhh - LE_GATE_Q, gh);
                    for (j = 0; j < r.hs; j++) {
                        int64_t H = r.hs;
                        if (!lstm) {
                            int64_t rg = le_sigmoid_q15(le_sat((int64_t)gi[j] + gh[j], 16));
                            int64_t zg = le_sigmoid_q15(le_sat((int64_t)gi[H + j] + gh[H + j], 16));
                            int64_t ng = le_tanh_q15(le_sat(
                                (int64_t)gi[2 * H + j] + le_rshift(rg * gh[2 * H + j], LE_PROB_Q), 16));
                            int64_t acc = (((int64_t)1 << LE_PROB_Q) - zg) * ng
                                          + zg * ((int64_t)hr[j] * ((int64_t)1 << (LE_PROB_Q - r.exp_h)));
                            hnew[j] = (int32_t)le_requant(acc, 2 * LE_PROB_Q - r.exp_h, r.bits_h);
                        } else {
                            int64_t ig = le_sigmoid_q15(le_sat((int64_t)gi[j] + gh[j], 16));
                            int64_t fg = le_sigmoid_q15(le_sat((int64_t)gi[H + j] + gh[H + j], 16));
                            int64_t gg = le_tanh_q15(le_sat((int64_t)gi[2 * H + j] + gh[2 * H + j], 16));
                            int64_t og = le_sigmoid_q15(le_sat((int64_t)gi[3 * H + j] + gh[3 * H + j], 16));
                            int64_t cn = le_requant(fg * cr[j] * 16 + ig * gg,
                                                    2 * LE_PROB_Q - LE_CELL_Q, LE_CELL_BITS);
                            cnew[j] = (int32_t)cn;
                            hnew[j] = (int32_t)le_requant(og * le_tanh_q15(cn),
                                                          2 * LE_PROB_Q - r.exp_h, r.bits_h);
                        }
                    }
                    for (j = 0; j < r.hs; j++) {
                        hr[j] = hnew[j];
                        if (lstm) cr[j] = cnew[j];
                        yrow[j] = hnew[j];
                    }
                }
            for (n = 0; n < r.n; n++)
                for (j = 0; j < r.hs; j++) {
                    int64_t at = (k * r.n + n) * r.hs + j;
                    if (r.has_hn) le_st(&r.hn, at, h[n * r.hs + j]);
                    if (r.has_cn) le_st(&r.cn, at, c[n * r.hs + j]);
                }
        }
    }
    if (r.has_y) {
        const int32_t *yl = ybuf[(r.layers - 1) % 2];
        int64_t dh = r.dirs * r.hs;
        for (t = 0; t < r.steps; t++)
            for (n = 0; n < r.n; n++)
                for (j = 0; j < dh; j++) {
                    int64_t at = r.batch_first ? (n * r.steps + t) * dh + j : (t * r.n + n) * dh + j;
                    le_st(&r.y, at, yl[(t * r.n + n) * dh + j]);
                }
    }
    return LE_OK;
}

static le_status gru(le_op *op) { return run(op, 0); }
static le_status lstm(le_op *op) { return run(op, 1); }

static const char *const a_gru[] = {"hidden_size", "num_layers", "bidirectional", "batch_first",
                                    "has_bias", "exp_x", "bits_x", "exp_w", "bits_w", "exp_h",
                                    "bits_h", NULL};
static const char *const a_lstm[] = {"hidden_size", "num_layers", "bidirectional", "batch_first",
                                     "has_bias", "exp_x", "bits_x", "exp_w", "bits_w", "exp_h",
                                     "bits_h", "exp_c", "bits_c", NULL};

const le_op_entry le_ops_rnn[] = {
    {LE_LINGER_DOMAIN, "GRUInt", gru, a_gru},
    {LE_LINGER_DOMAIN, "LSTMInt", lstm, a_lstm},
};
const uint32_t le_ops_rnn_count = sizeof le_ops_rnn / sizeof le_ops_rnn[0];
