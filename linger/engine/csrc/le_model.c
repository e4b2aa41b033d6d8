/* Loading and validating a packed model file, binding memory, running the ops.
 *
 * Nothing is copied out of the file: tensor records, op records and attributes are decoded
 * from it when needed, so the engine needs no table of its own. le_open walks every record
 * once with bounds checks (the rules of linger/packfile/reader.py) and then runs every op's
 * kernel in "check" mode: after a successful le_open, every offset, length, id, attribute,
 * dtype and shape a kernel will touch has been checked. */
#include "le_conv.h"
#include "le_internal.h"

#define HEADER_SIZE 64u
#define SECTION_SIZE 24u
#define TENSOR_SIZE 112u
#define OP_HEAD_SIZE 32u
#define ATTR_HEAD_SIZE 16u
#define IO_HEAD_SIZE 16u
#define IO_DIM_SIZE 16u
#define PLAN_MEM_SIZE 40u
#define BLOB_SIZE 24u
#define F_INPUT 1u
#define F_OUTPUT 2u
#define F_PARAM 4u
#define UNKNOWN_RANK 0xFFFFFFFFu
/* no tensor dimension or element count beyond this (keeps every product exact in int64) */
#define MAX_ELEMS ((int64_t)1 << 40)

/* ---- CRC-32 (zlib's polynomial), 16-entry table -------------------------------------------- */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

static uint32_t crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < n; i++) {
        c ^= p[i];
        c = (c >> 4) ^ crc_nibble[c & 15u];
        c = (c >> 4) ^ crc_nibble[c & 15u];
    }
    return c ^ 0xFFFFFFFFu;
}

uint32_t le_dtype_size(int32_t code) {
    switch (code) {
    case LE_INT8: case LE_BOOL: case LE_UINT8: return 1;
    case LE_INT16: case LE_UINT16: case LE_FLOAT16: return 2;
    case LE_INT32: case LE_UINT32: case LE_FLOAT32: return 4;
    case LE_INT64: case LE_UINT64: case LE_FLOAT64: return 8;
    default: return 0;
    }
}

int32_t le_int_dtype(int64_t bits) {
    return bits <= 8 ? LE_INT8 : bits <= 16 ? LE_INT16 : bits <= 32 ? LE_INT32 : LE_INT64;
}

/* ---- sections -------------------------------------------------------------------------------- */
typedef struct { uint64_t off, end; int found; } span;

static const char *const kinds[7] = {"STRS", "MODL", "TENS", "OPER", "IOTB", "PLAN", "PARM"};

static le_status read_sections(const uint8_t *f, size_t n, uint32_t nsec, span sp[7]) {
    uint64_t table_end = (uint64_t)HEADER_SIZE + (uint64_t)nsec * SECTION_SIZE;
    uint32_t i, j;
    if (table_end > n) return LE_ERR_FORMAT;
    for (i = 0; i < 7; i++) sp[i].found = 0;
    for (i = 0; i < nsec; i++) {
        const uint8_t *e = f + HEADER_SIZE + (size_t)i * SECTION_SIZE;
        uint32_t flags = le_rd32(e + 4);
        uint64_t off = le_rd64(e + 8), len = le_rd64(e + 16);
        int k = -1;
        for (j = 0; j < 7; j++)
            if (memcmp(e, kinds[j], 4) == 0) k = (int)j;
        if (off % 16u || off < table_end || off > n || len > n - off) return LE_ERR_FORMAT;
        if (k < 0) {
            if (flags & 1u) continue;          /* optional section of a later writer */
            return LE_ERR_FORMAT;
        }
        if (sp[k].found) return LE_ERR_FORMAT;
        sp[k].off = off;
        sp[k].end = off + len;
        sp[k].found = 1;
    }
    for (i = 0; i < 7; i++) {
        if (!sp[i].found) return LE_ERR_FORMAT;
        for (j = 0; j < i; j++)
            if (sp[i].off < sp[j].end && sp[j].off < sp[i].end) return LE_ERR_FORMAT;
    }
    return LE_OK;
}

static int str_ok(const le_model *m, const uint8_t *ref) {
    uint64_t off = le_rd32(ref), len = le_rd32(ref + 4);
    return off + len <= m->strs_len;
}

static const uint8_t *tensor_rec(const le_model *m, uint32_t id) {
    return m->file + m->tens_off + (size_t)id * TENSOR_SIZE;
}

/* Decode tensor `id` (already validated) into a view; data bound when the model is. */
static void view(const le_model *m, uint32_t id, le_tensor *t) {
    const uint8_t *r = tensor_rec(m, id);
    uint32_t flags = r[10], mem = r[11];
    uint64_t offset = le_rd64(r + 24);
    int i;
    t->id = (int32_t)id;
    t->dtype = r[8];
    t->ndim = r[9];
    t->elsize = le_dtype_size(t->dtype);
    t->numel = 1;
    for (i = 0; i < t->ndim; i++) {
        t->dims[i] = le_rds64(r + 48 + 8 * i);
        t->numel *= t->dims[i];
    }
    for (; i < LE_MAX_DIMS; i++) t->dims[i] = 1;
    t->data = NULL;
    if (flags & F_PARAM)
        t->data = (uint8_t *)(uintptr_t)(m->file + m->blob_off[mem] + offset);
    else if (m->state == 2 && m->arena[mem])
        t->data = m->arena[mem] + (offset - m->base[mem]);
}

static le_status check_tensor(le_model *m, uint32_t id) {
    const uint8_t *r = tensor_rec(m, id);
    uint32_t code = r[8], ndim = r[9], flags = r[10], mem = r[11], i;
    int32_t alias = (int32_t)le_rd32(r + 12);
    uint64_t first = le_rd32(r + 16), last = le_rd32(r + 20);
    uint64_t offset = le_rd64(r + 24), nbytes = le_rd64(r + 32), size = le_rd64(r + 40);
    uint32_t es = le_dtype_size((int32_t)code);
    int64_t numel = 1;
    if (!str_ok(m, r) || es == 0 || ndim > LE_MAX_DIMS || mem >= LE_MEM_COUNT) return LE_ERR_FORMAT;
    for (i = 0; i < LE_MAX_DIMS; i++) {
        int64_t d = le_rds64(r + 48 + 8 * i);
        if (i >= ndim) {
            if (d != 0) return LE_ERR_FORMAT;
            continue;
        }
        if (d < 0 || d > MAX_ELEMS) return LE_ERR_FORMAT;
        numel *= d;
        if (numel > MAX_ELEMS) return LE_ERR_FORMAT;
    }
    if (nbytes != (uint64_t)numel * es || size < nbytes) return LE_ERR_FORMAT;
    if (alias < -1 || alias >= (int32_t)m->n_tensors || alias == (int32_t)id || first > last)
        return LE_ERR_FORMAT;
    if (flags & F_PARAM) {
        if (!m->has_blob[mem] || offset > m->blob_len[mem] || nbytes > m->blob_len[mem] - offset)
            return LE_ERR_FORMAT;
        if ((m->blob_off[mem] + offset) % es) return LE_ERR_FORMAT;
    } else {
        if (!m->planned[mem] || offset < m->base[mem] || offset > m->peak[mem]
            || nbytes > m->peak[mem] - offset || (offset - m->base[mem]) % es)
            return LE_ERR_FORMAT;
    }
    return LE_OK;
}

static le_status read_plan(le_model *m, const span *s) {
    const uint8_t *p = m->file + s->off;
    uint64_t len = s->end - s->off;
    uint32_t n, i;
    if (len < 16) return LE_ERR_FORMAT;
    n = le_rd32(p);
    if (!str_ok(m, p + 4) || n > LE_MEM_COUNT || 16 + (uint64_t)n * PLAN_MEM_SIZE > len)
        return LE_ERR_FORMAT;
    for (i = 0; i < n; i++) {
        const uint8_t *r = p + 16 + (size_t)i * PLAN_MEM_SIZE;
        uint32_t kind = le_rd32(r);
        uint64_t params = le_rd64(r + 16), peak = le_rd64(r + 24);
        if (kind >= LE_MEM_COUNT || m->planned[kind] || params > peak || peak > ((uint64_t)1 << 40))
            return LE_ERR_FORMAT;
        m->planned[kind] = 1;
        m->base[kind] = params;
        m->peak[kind] = peak;
    }
    return LE_OK;
}

static le_status read_parm(le_model *m, const span *s) {
    const uint8_t *p = m->file + s->off;
    uint64_t len = s->end - s->off;
    uint32_t n, i;
    if (len < 8) return LE_ERR_FORMAT;
    n = le_rd32(p);
    if (n > LE_MEM_COUNT || 8 + (uint64_t)n * BLOB_SIZE > len) return LE_ERR_FORMAT;
    for (i = 0; i < n; i++) {
        const uint8_t *r = p + 8 + (size_t)i * BLOB_SIZE;
        uint32_t mem = le_rd32(r);
        uint64_t off = le_rd64(r + 8), blen = le_rd64(r + 16);
        if (mem >= LE_MEM_COUNT || m->has_blob[mem] || off < 8 + (uint64_t)n * BLOB_SIZE
            || off > len || blen > len - off)
            return LE_ERR_FORMAT;
        m->has_blob[mem] = 1;
        m->blob_off[mem] = s->off + off;
        m->blob_len[mem] = blen;
    }
    return LE_OK;
}

static le_status read_io(le_model *m, const span *s) {
    uint64_t pos = s->off + 8, end = s->end;
    uint32_t k, d, n;
    if (end - s->off < 8) return LE_ERR_FORMAT;
    m->n_inputs = le_rd32(m->file + s->off);
    m->n_outputs = le_rd32(m->file + s->off + 4);
    n = m->n_inputs + m->n_outputs;
    if (n < m->n_inputs || (uint64_t)n * IO_HEAD_SIZE > end - pos) return LE_ERR_FORMAT;
    m->io_off = (uint32_t)pos;
    for (k = 0; k < n; k++) {
        const uint8_t *r;
        int32_t tid;
        uint32_t ndim;
        if (IO_HEAD_SIZE > end - pos) return LE_ERR_FORMAT;
        r = m->file + pos;
        tid = (int32_t)le_rd32(r);
        ndim = le_rd32(r + 8);
        if (tid < 0 || (uint32_t)tid >= m->n_tensors) return LE_ERR_FORMAT;
        if (k < m->n_inputs && (tensor_rec(m, (uint32_t)tid)[10] & F_PARAM)) return LE_ERR_FORMAT;
        pos += IO_HEAD_SIZE;
        if (ndim == UNKNOWN_RANK) continue;
        if ((uint64_t)ndim * IO_DIM_SIZE > end - pos) return LE_ERR_FORMAT;
        for (d = 0; d < ndim; d++) {
            uint32_t kind = le_rd32(m->file + pos + (size_t)d * IO_DIM_SIZE);
            if (kind > 2) return LE_ERR_FORMAT;
        }
        pos += (uint64_t)ndim * IO_DIM_SIZE;
    }
    m->io_end = (uint32_t)pos;
    return LE_OK;
}

/* One op record starting at *pos: checks it and moves *pos past it. */
static le_status walk_op(const le_model *m, uint64_t *pos, uint64_t end, le_op *op) {
    const uint8_t *h;
    uint32_t k, n;
    if (OP_HEAD_SIZE > end - *pos) return LE_ERR_FORMAT;
    h = m->file + *pos;
    if (!str_ok(m, h) || !str_ok(m, h + 8) || !str_ok(m, h + 16)) return LE_ERR_FORMAT;
    op->n_in = le_rd16(h + 24);
    op->n_out = le_rd16(h + 26);
    op->n_attr = le_rd16(h + 28);
    *pos += OP_HEAD_SIZE;
    n = op->n_in + op->n_out;
    if ((uint64_t)n * 4 > end - *pos) return LE_ERR_FORMAT;
    op->ids = m->file + *pos;
    for (k = 0; k < n; k++) {
        int32_t id = (int32_t)le_rd32(op->ids + 4 * k);
        if (id < -1 || id >= (int32_t)m->n_tensors) return LE_ERR_FORMAT;
    }
    *pos += (uint64_t)n * 4;
    *pos = (*pos + 7u) & ~(uint64_t)7u;
    if (*pos > end) return LE_ERR_FORMAT;
    op->attrs = m->file + *pos;
    for (k = 0; k < op->n_attr; k++) {
        const uint8_t *a;
        uint32_t type, count;
        uint64_t need;
        if (ATTR_HEAD_SIZE > end - *pos) return LE_ERR_FORMAT;
        a = m->file + *pos;
        type = a[8];
        count = le_rd32(a + 12);
        if (!str_ok(m, a)) return LE_ERR_FORMAT;
        *pos += ATTR_HEAD_SIZE;
        switch (type) {
        case LE_A_INT: case LE_A_INTS: need = (uint64_t)count * 8; break;
        case LE_A_FLOAT: case LE_A_FLOATS: need = (uint64_t)count * 4; break;
        case LE_A_STRING: case LE_A_STRINGS: need = (uint64_t)count * 8; break;
        case LE_A_TENSOR: {
            uint32_t code, ndim, d;
            int64_t numel = 1;
            if (count != 1 || 8 > end - *pos) return LE_ERR_FORMAT;
            code = m->file[*pos];
            ndim = m->file[*pos + 1];
            if (le_dtype_size((int32_t)code) == 0 || ndim > LE_MAX_DIMS
                || 8 + (uint64_t)ndim * 8 + 8 > end - *pos)
                return LE_ERR_FORMAT;
            for (d = 0; d < ndim; d++) {
                int64_t v = le_rds64(m->file + *pos + 8 + 8 * d);
                if (v < 0 || v > MAX_ELEMS) return LE_ERR_FORMAT;
                numel *= v;
                if (numel > MAX_ELEMS) return LE_ERR_FORMAT;
            }
            need = le_rd64(m->file + *pos + 8 + 8 * ndim);
            if (need != (uint64_t)numel * le_dtype_size((int32_t)code)) return LE_ERR_FORMAT;
            need += 16 + (uint64_t)ndim * 8;
            break;
        }
        default: return LE_ERR_FORMAT;
        }
        if ((type == LE_A_INT || type == LE_A_FLOAT || type == LE_A_STRING) && count != 1)
            return LE_ERR_FORMAT;
        if (need > end - *pos) return LE_ERR_FORMAT;
        if (type == LE_A_STRING || type == LE_A_STRINGS) {
            uint32_t i;
            for (i = 0; i < count; i++)
                if (!str_ok(m, m->file + *pos + 8 * i)) return LE_ERR_FORMAT;
        }
        *pos += need;
        *pos = (*pos + 7u) & ~(uint64_t)7u;
        if (*pos > end) return LE_ERR_FORMAT;
    }
    return LE_OK;
}

static int str_eq(const le_model *m, const uint8_t *ref, const char *s) {
    uint32_t off = le_rd32(ref), len = le_rd32(ref + 4);
    return strlen(s) == len && memcmp(m->file + m->strs_off + off, s, len) == 0;
}

static const le_op_entry *lookup(const le_model *m, const uint8_t *h) {
    uint32_t i;
    const le_op_entry *e;
    for (i = 0; (e = le_registry_entry(i)) != NULL; i++) {
        if (!str_eq(m, h, e->op_type)) continue;
        if (str_eq(m, h + 8, e->domain) || (e->domain[0] == 0 && str_eq(m, h + 8, "ai.onnx")))
            return e;
    }
    return NULL;
}

/* Every attribute of the op must be one its kernel reads: an unknown one could change the
 * meaning of the op (a later version's option), so it is refused rather than ignored. */
static le_status known_attrs(const le_model *m, const le_op *op, const le_op_entry *e) {
    const uint8_t *a = op->attrs;
    uint32_t k;
    for (k = 0; k < op->n_attr; k++) {
        const char *const *name;
        int ok = 0;
        uint32_t type = a[8], count = le_rd32(a + 12);
        uint64_t size;
        for (name = e->attrs; name && *name; name++)
            if (str_eq(m, a, *name)) ok = 1;
        if (!ok) return LE_ERR_ATTR;
        a += ATTR_HEAD_SIZE;
        if (type == LE_A_INT || type == LE_A_INTS || type == LE_A_STRING || type == LE_A_STRINGS)
            size = (uint64_t)count * 8;
        else if (type == LE_A_FLOAT || type == LE_A_FLOATS)
            size = (uint64_t)count * 4;
        else
            size = 16 + (uint64_t)a[1] * 8 + le_rd64(a + 8 + 8 * (uint64_t)a[1]);
        a += (size + 7u) & ~(uint64_t)7u;
    }
    return LE_OK;
}

/* Walk the ops; run (check == 0) or check each one. */
static le_status each_op(le_model *m, int run) {
    uint64_t pos = m->oper_off;
    uint32_t k;
    for (k = 0; k < m->n_ops; k++) {
        le_op op;
        const uint8_t *h = m->file + pos;
        const le_op_entry *e;
        le_status s;
        uint32_t i;
        memset(&op, 0, sizeof op);
        op.m = m;
        op.run = run;
        m->failed_op = (int32_t)k;
        LE_CHECK(walk_op(m, &pos, m->oper_end, &op));
        e = lookup(m, h);
        if (e == NULL) return LE_ERR_UNSUPPORTED_OP;
        if (!run) {
            LE_CHECK(known_attrs(m, &op, e));
            /* execution order: what an op reads was written before it (or is an input or a
             * parameter); what it writes is first used at this step */
            for (i = 0; i < op.n_in + op.n_out; i++) {
                int32_t id = (int32_t)le_rd32(op.ids + 4 * i);
                const uint8_t *r;
                if (id < 0) continue;
                r = tensor_rec(m, (uint32_t)id);
                if (i < op.n_in ? (!(r[10] & (F_PARAM | F_INPUT)) && le_rd32(r + 16) >= k)
                                : ((r[10] & (F_PARAM | F_INPUT)) || le_rd32(r + 16) != k))
                    return LE_ERR_FORMAT;
            }
        }
        s = e->fn(&op);
        if (s != LE_OK) return s;
        if (!run && op.scratch > m->scratch_size) m->scratch_size = op.scratch;
    }
    m->failed_op = -1;
    return LE_OK;
}

le_status le_open(le_model *m, const void *file, size_t size, int32_t target_id) {
    const uint8_t *f = (const uint8_t *)file;
    span sp[7];
    uint32_t version, nsec, i;
    uint64_t pos;
    if (m == NULL) return LE_ERR_ARG;
    memset(m, 0, sizeof *m);
    m->failed_op = -1;
    if (f == NULL || ((uintptr_t)f & 7u)) return LE_ERR_ARG;
    if (size < HEADER_SIZE) return LE_ERR_TRUNCATED;
    if (memcmp(f, "LINGERPK", 8) != 0) return LE_ERR_MAGIC;
    version = le_rd16(f + 8);
    if (version > LE_FORMAT_VERSION) return LE_ERR_VERSION;
    if (le_rd32(f + 12) != 0x0A0B0C0Du) return LE_ERR_FORMAT;
    if (crc32(f, 60) != le_rd32(f + 60)) return LE_ERR_CRC;
    if (version < 1) return LE_ERR_VERSION;
    if (le_rd16(f + 10) != HEADER_SIZE || le_rd32(f + 40) != HEADER_SIZE) return LE_ERR_FORMAT;
    if (le_rd64(f + 48) != (uint64_t)size) return LE_ERR_TRUNCATED;
    if (size > 0xFFFFFFF0u) return LE_ERR_FORMAT;
    if (crc32(f + HEADER_SIZE, size - HEADER_SIZE) != le_rd32(f + 56)) return LE_ERR_CRC;
    m->target_id = (int32_t)le_rd32(f + 16);
    if (target_id != LE_TARGET_ANY && target_id != m->target_id) return LE_ERR_TARGET;
    nsec = le_rd32(f + 36);
    LE_CHECK(read_sections(f, size, nsec, sp));
    m->file = f;
    m->size = size;
    m->strs_off = (uint32_t)sp[0].off;
    m->strs_len = (uint32_t)(sp[0].end - sp[0].off);
    LE_CHECK(read_plan(m, &sp[5]));
    LE_CHECK(read_parm(m, &sp[6]));
    /* TENS */
    if (sp[2].end - sp[2].off < 8) return LE_ERR_FORMAT;
    m->n_tensors = le_rd32(f + sp[2].off);
    if (le_rd32(f + sp[2].off + 4) != TENSOR_SIZE
        || (uint64_t)m->n_tensors * TENSOR_SIZE > sp[2].end - sp[2].off - 8)
        return LE_ERR_FORMAT;
    m->tens_off = (uint32_t)sp[2].off + 8;
    for (i = 0; i < m->n_tensors; i++) LE_CHECK(check_tensor(m, i));
    LE_CHECK(read_io(m, &sp[4]));
    /* OPER: a first walk checks every record's bounds, then each kernel checks its op */
    if (sp[3].end - sp[3].off < 4) return LE_ERR_FORMAT;
    m->n_ops = le_rd32(f + sp[3].off);
    if ((uint64_t)m->n_ops * OP_HEAD_SIZE > sp[3].end - sp[3].off - 4) return LE_ERR_FORMAT;
    m->oper_off = (uint32_t)sp[3].off + 4;
    m->oper_end = (uint32_t)sp[3].end;
    pos = m->oper_off;
    for (i = 0; i < m->n_ops; i++) {
        le_op op;
        m->failed_op = (int32_t)i;
        LE_CHECK(walk_op(m, &pos, m->oper_end, &op));
    }
    m->failed_op = -1;
    m->state = 1;
    {
        le_status s = each_op(m, 0);
        if (s != LE_OK) {
            m->state = 0;
            return s;
        }
    }
    m->scratch_size = (m->scratch_size + 7u) & ~(size_t)7u;
    return LE_OK;
}

size_t le_arena_size(const le_model *m, int mem) {
    if (m == NULL || m->state == 0 || mem < 0 || mem >= LE_MEM_COUNT || !m->planned[mem]) return 0;
    return (size_t)(m->peak[mem] - m->base[mem]);
}

size_t le_scratch_size(const le_model *m) { return m && m->state ? m->scratch_size : 0; }

le_status le_bind(le_model *m, void *const arenas[LE_MEM_COUNT], void *scratch) {
    int k;
    if (m == NULL || arenas == NULL) return LE_ERR_ARG;
    if (m->state == 0) return LE_ERR_STATE;
    for (k = 0; k < LE_MEM_COUNT; k++) {
        uint8_t *a = (uint8_t *)arenas[k];
        if (((uintptr_t)a & 7u) || (a == NULL && le_arena_size(m, k) > 0)) return LE_ERR_ARG;
        m->arena[k] = a;
    }
    if (((uintptr_t)scratch & 7u) || (scratch == NULL && m->scratch_size > 0)) return LE_ERR_ARG;
    m->scratch = (uint8_t *)scratch;
    m->state = 2;
    return LE_OK;
}

le_status le_run(le_model *m) {
    if (m == NULL) return LE_ERR_ARG;
    if (m->state != 2) return LE_ERR_STATE;
    return each_op(m, 1);
}

uint32_t le_num_io(const le_model *m, int which) {
    if (m == NULL || m->state == 0) return 0;
    return which == LE_INPUT ? m->n_inputs : m->n_outputs;
}

le_status le_io(const le_model *m, int which, uint32_t k, le_io_info *info) {
    uint64_t pos;
    uint32_t i, idx;
    le_tensor t;
    const uint8_t *r;
    if (m == NULL || info == NULL) return LE_ERR_ARG;
    if (m->state == 0) return LE_ERR_STATE;
    if (k >= le_num_io(m, which)) return LE_ERR_ARG;
    idx = which == LE_INPUT ? k : m->n_inputs + k;
    pos = m->io_off;
    for (i = 0; i < idx; i++) {
        uint32_t ndim = le_rd32(m->file + pos + 8);
        pos += IO_HEAD_SIZE + (ndim == UNKNOWN_RANK ? 0 : (uint64_t)ndim * IO_DIM_SIZE);
    }
    view(m, le_rd32(m->file + pos), &t);
    r = tensor_rec(m, (uint32_t)t.id);
    info->data = t.data;
    info->nbytes = (size_t)(t.numel * t.elsize);
    info->dtype = t.dtype;
    info->ndim = t.ndim;
    for (i = 0; i < LE_MAX_DIMS; i++) info->dims[i] = (int32_t)i < t.ndim ? t.dims[i] : 0;
    info->name = (const char *)(m->file + m->strs_off + le_rd32(r));
    info->name_len = le_rd32(r + 4);
    return LE_OK;
}

size_t le_sizeof_model(void) { return sizeof(le_model); }

uint32_t le_fast_paths(void) { return le_conv_simd_available() ? LE_FAST_X86_CONV : 0u; }

uint32_t le_num_ops(const le_model *m) { return m && m->file ? m->n_ops : 0; }
int32_t le_failed_op(const le_model *m) { return m ? m->failed_op : -1; }

le_status le_op_info(const le_model *m, uint32_t k, const char **op_type, uint32_t *type_len,
                     const char **name, uint32_t *name_len) {
    uint64_t pos;
    uint32_t i;
    le_op op;
    if (m == NULL || m->file == NULL || m->oper_end == 0 || k >= m->n_ops) return LE_ERR_ARG;
    pos = m->oper_off;
    for (i = 0; i < k; i++)
        if (walk_op(m, &pos, m->oper_end, &op) != LE_OK) return LE_ERR_ARG;
    if (OP_HEAD_SIZE > m->oper_end - pos) return LE_ERR_ARG;
    {
        const uint8_t *h = m->file + pos;
        if (!str_ok(m, h) || !str_ok(m, h + 16)) return LE_ERR_ARG;
        if (op_type) *op_type = (const char *)(m->file + m->strs_off + le_rd32(h));
        if (type_len) *type_len = le_rd32(h + 4);
        if (name) *name = (const char *)(m->file + m->strs_off + le_rd32(h + 16));
        if (name_len) *name_len = le_rd32(h + 20);
    }
    return LE_OK;
}

const char *le_status_name(le_status s) {
    switch (s) {
    case LE_OK: return "ok";
    case LE_ERR_ARG: return "bad argument";
    case LE_ERR_TRUNCATED: return "truncated file";
    case LE_ERR_MAGIC: return "not a linger packed model";
    case LE_ERR_VERSION: return "unsupported format version";
    case LE_ERR_TARGET: return "packed for another target";
    case LE_ERR_CRC: return "checksum mismatch";
    case LE_ERR_FORMAT: return "damaged file";
    case LE_ERR_UNSUPPORTED_OP: return "unsupported op";
    case LE_ERR_ATTR: return "bad attribute";
    case LE_ERR_SHAPE: return "bad dtype or shape";
    case LE_ERR_INPUT: return "bad input value";
    case LE_ERR_STATE: return "not bound";
    }
    return "unknown status";
}

const le_op_entry *le_registry_entry(uint32_t k) {
    uint32_t f;
    for (f = 0; f < le_num_families; f++) {
        if (k < *le_families[f].count) return &le_families[f].ops[k];
        k -= *le_families[f].count;
    }
    return NULL;
}

uint32_t le_num_supported_ops(void) {
    uint32_t n = 0;
    while (le_registry_entry(n) != NULL) n++;
    return n;
}

const char *le_supported_op(uint32_t k, const char **domain) {
    const le_op_entry *e = le_registry_entry(k);
    if (e == NULL) return NULL;
    if (domain) *domain = e->domain[0] ? e->domain : "ai.onnx";
    return e->op_type;
}

/* ---- op context ------------------------------------------------------------------------------ */
static int io_view(const le_op *op, uint32_t slot, le_tensor *t) {
    int32_t id = (int32_t)le_rd32(op->ids + 4 * slot);
    if (id < 0) return 0;
    view(op->m, (uint32_t)id, t);
    return 1;
}

int le_in(const le_op *op, uint32_t k, le_tensor *t) {
    return k < op->n_in ? io_view(op, k, t) : 0;
}

int le_out(const le_op *op, uint32_t k, le_tensor *t) {
    return k < op->n_out ? io_view(op, op->n_in + k, t) : 0;
}

/* Find attribute `name`: its header, or NULL. */
static const uint8_t *find_attr(const le_op *op, const char *name) {
    const uint8_t *a = op->attrs;
    uint32_t k;
    for (k = 0; k < op->n_attr; k++) {
        uint32_t type = a[8], count = le_rd32(a + 12);
        uint64_t size;
        if (str_eq(op->m, a, name)) return a;
        if (type == LE_A_INT || type == LE_A_INTS || type == LE_A_STRING || type == LE_A_STRINGS)
            size = (uint64_t)count * 8;
        else if (type == LE_A_FLOAT || type == LE_A_FLOATS)
            size = (uint64_t)count * 4;
        else
            size = 16 + (uint64_t)a[ATTR_HEAD_SIZE + 1] * 8
                   + le_rd64(a + ATTR_HEAD_SIZE + 8 + 8 * (uint64_t)a[ATTR_HEAD_SIZE + 1]);
        a += ATTR_HEAD_SIZE + ((size + 7u) & ~(uint64_t)7u);
    }
    return NULL;
}

int le_attr_int(const le_op *op, const char *name, int64_t *v) {
    const uint8_t *a = find_attr(op, name);
    if (a == NULL) return 0;
    if (a[8] != LE_A_INT) return -1;
    *v = le_rds64(a + ATTR_HEAD_SIZE);
    return 1;
}

int le_attr_ints(const le_op *op, const char *name, const uint8_t **p, uint32_t *count) {
    const uint8_t *a = find_attr(op, name);
    if (a == NULL) return 0;
    if (a[8] != LE_A_INTS) return -1;
    *p = a + ATTR_HEAD_SIZE;
    *count = le_rd32(a + 12);
    return 1;
}

int le_attr_str(const le_op *op, const char *name, const char **s, uint32_t *len) {
    const uint8_t *a = find_attr(op, name);
    if (a == NULL) return 0;
    if (a[8] != LE_A_STRING) return -1;
    *s = (const char *)(op->m->file + op->m->strs_off + le_rd32(a + ATTR_HEAD_SIZE));
    *len = le_rd32(a + ATTR_HEAD_SIZE + 4);
    return 1;
}

int le_attr_strs(const le_op *op, const char *name, uint32_t k, const char **s, uint32_t *len,
                 uint32_t *count) {
    const uint8_t *a = find_attr(op, name);
    if (a == NULL) return 0;
    if (a[8] != LE_A_STRINGS && a[8] != LE_A_STRING) return -1;
    *count = le_rd32(a + 12);
    if (k >= *count) return -1;
    *s = (const char *)(op->m->file + op->m->strs_off + le_rd32(a + ATTR_HEAD_SIZE + 8 * k));
    *len = le_rd32(a + ATTR_HEAD_SIZE + 8 * k + 4);
    return 1;
}

int le_attr_floats(const le_op *op, const char *name, const uint8_t **p, uint32_t *count,
                   int *single) {
    const uint8_t *a = find_attr(op, name);
    if (a == NULL) return 0;
    if (a[8] != LE_A_FLOAT && a[8] != LE_A_FLOATS) return -1;
    *p = a + ATTR_HEAD_SIZE;
    *count = le_rd32(a + 12);
    *single = a[8] == LE_A_FLOAT;
    return 1;
}

int le_attr_tensor(const le_op *op, const char *name, le_tensor *t) {
    const uint8_t *a = find_attr(op, name), *h;
    int i;
    if (a == NULL) return 0;
    if (a[8] != LE_A_TENSOR) return -1;
    h = a + ATTR_HEAD_SIZE;
    t->id = -1;
    t->dtype = h[0];
    t->ndim = h[1];
    t->elsize = le_dtype_size(t->dtype);
    t->numel = 1;
    for (i = 0; i < t->ndim; i++) {
        t->dims[i] = le_rds64(h + 8 + 8 * i);
        t->numel *= t->dims[i];
    }
    for (; i < LE_MAX_DIMS; i++) t->dims[i] = 1;
    t->data = (uint8_t *)(uintptr_t)(h + 16 + 8 * t->ndim);
    return 1;
}

le_status le_opt_int(const le_op *op, const char *name, int64_t def, int64_t lo, int64_t hi,
                     int64_t *v) {
    int r = le_attr_int(op, name, v);
    if (r < 0) return LE_ERR_ATTR;
    if (r == 0) *v = def;
    return (*v < lo || *v > hi) ? LE_ERR_ATTR : LE_OK;
}

le_status le_req_int(const le_op *op, const char *name, int64_t lo, int64_t hi, int64_t *v) {
    int r = le_attr_int(op, name, v);
    if (r <= 0 || *v < lo || *v > hi) return LE_ERR_ATTR;
    return LE_OK;
}

le_status le_opt_ints(const le_op *op, const char *name, uint32_t n, int64_t def, int64_t lo,
                      int64_t hi, int64_t *out) {
    const uint8_t *p;
    uint32_t count, i;
    int r = le_attr_ints(op, name, &p, &count);
    if (r < 0 || (r == 1 && count != n)) return LE_ERR_ATTR;
    for (i = 0; i < n; i++) {
        out[i] = r ? le_rds64(p + 8 * i) : def;
        if (out[i] < lo || out[i] > hi) return LE_ERR_ATTR;
    }
    return LE_OK;
}

le_status le_exp(const le_op *op, const char *name, int64_t *v) {
    return le_req_int(op, name, -LE_MAX_EXP, LE_MAX_EXP, v);
}

le_status le_bits(const le_op *op, const char *name, int64_t maxbits, int64_t *v) {
    return le_req_int(op, name, 2, maxbits, v);
}

int le_same_shape(const le_tensor *a, const le_tensor *b) {
    int i;
    if (a->ndim != b->ndim) return 0;
    for (i = 0; i < a->ndim; i++)
        if (a->dims[i] != b->dims[i]) return 0;
    return 1;
}

int64_t le_numel_range(const le_tensor *t, int from, int to) {
    int64_t n = 1;
    int i;
    for (i = from; i < to; i++) n *= t->dims[i];
    return n;
}

int le_is_float(int32_t dtype) { return dtype == LE_FLOAT32 || dtype == LE_FLOAT64; }

double le_ldf(const le_tensor *t, int64_t i) {
    if (t->dtype == LE_FLOAT32) {
        float f;
        memcpy(&f, t->data + 4 * i, 4);
        return f;
    }
    {
        double v;
        memcpy(&v, t->data + 8 * i, 8);
        return v;
    }
}

void le_stf(const le_tensor *t, int64_t i, double v) {
    if (t->dtype == LE_FLOAT32) {
        float f = (float)v;
        memcpy(t->data + 4 * i, &f, 4);
    } else {
        memcpy(t->data + 8 * i, &v, 8);
    }
}

int64_t le_ld(const le_tensor *t, int64_t i) {
    const uint8_t *p = t->data + (size_t)i * t->elsize;
    switch (t->dtype) {
    case LE_INT8: return *(const int8_t *)p;
    case LE_INT16: return *(const int16_t *)p;
    case LE_INT32: return *(const int32_t *)p;
    case LE_INT64: return *(const int64_t *)p;
    case LE_UINT8: case LE_BOOL: return *p;
    case LE_UINT16: return *(const uint16_t *)p;
    case LE_UINT32: return *(const uint32_t *)p;
    case LE_UINT64: return (int64_t) * (const uint64_t *)p;
    default: return 0;
    }
}

void le_st(const le_tensor *t, int64_t i, int64_t v) {
    uint8_t *p = t->data + (size_t)i * t->elsize;
    switch (t->dtype) {
    case LE_INT8: *(int8_t *)p = (int8_t)v; break;
    case LE_INT16: *(int16_t *)p = (int16_t)v; break;
    case LE_INT32: *(int32_t *)p = (int32_t)v; break;
    case LE_INT64: *(int64_t *)p = v; break;
    case LE_UINT8: case LE_BOOL: *p = (uint8_t)v; break;
    case LE_UINT16: *(uint16_t *)p = (uint16_t)v; break;
    case LE_UINT32: *(uint32_t *)p = (uint32_t)v; break;
    case LE_UINT64: *(uint64_t *)p = (uint64_t)v; break;
    default: break;
    }
}

/* ---- broadcasting --------------------------------------------------------------------------- */
le_status le_bcast(le_iter *it, const le_tensor *out, const le_tensor *a, const le_tensor *b) {
    const le_tensor *ops[3];
    int k, i;
    ops[0] = out;
    ops[1] = a;
    ops[2] = b;
    it->nd = out->ndim;
    for (i = 0; i < it->nd; i++) {
        it->dims[i] = out->dims[i];
        it->idx[i] = 0;
    }
    for (k = 0; k < 3; k++) {
        int64_t stride = 1;
        it->off[k] = 0;
        for (i = 0; i < LE_MAX_DIMS; i++) it->st[k][i] = 0;
        if (ops[k] == NULL) continue;
        if (ops[k]->ndim > out->ndim) return LE_ERR_SHAPE;
        for (i = ops[k]->ndim - 1; i >= 0; i--) {
            int j = i + out->ndim - ops[k]->ndim;
            int64_t d = ops[k]->dims[i];
            if (d == out->dims[j]) {
                it->st[k][j] = d == 1 ? 0 : stride;
            } else if (d != 1) {
                return LE_ERR_SHAPE;
            }
            stride *= d;
        }
    }
    /* every output axis is the broadcast of the inputs' axes (no axis larger than both); with
     * one input (Expand) the output may be larger */
    for (i = 0; b != NULL && i < out->ndim; i++) {
        int64_t want = 1;
        for (k = 1; k < 3; k++) {
            int j;
            if (ops[k] == NULL) continue;
            j = i - (out->ndim - ops[k]->ndim);
            if (j >= 0 && ops[k]->dims[j] != 1) want = ops[k]->dims[j];
        }
        if (want != out->dims[i] && !(out->dims[i] == 0)) return LE_ERR_SHAPE;
        if (out->dims[i] == 0) {
            for (k = 1; k < 3; k++) {
                int j;
                if (ops[k] == NULL) continue;
                j = i - (out->ndim - ops[k]->ndim);
                if (j >= 0 && ops[k]->dims[j] != 0 && ops[k]->dims[j] != 1) return LE_ERR_SHAPE;
            }
        }
    }
    return LE_OK;
}

void le_iter_next(le_iter *it) {
    int i, k;
    for (i = it->nd - 1; i >= 0; i--) {
        it->idx[i]++;
        for (k = 0; k < 3; k++) it->off[k] += it->st[k][i];
        if (it->idx[i] < it->dims[i]) return;
        for (k = 0; k < 3; k++) it->off[k] -= it->st[k][i] * it->dims[i];
        it->idx[i] = 0;
    }
}
