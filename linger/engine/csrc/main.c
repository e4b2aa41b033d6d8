/* linger-engine: run a packed model on the host, like the original toolchain's test program.
 *
 *   linger-engine MODEL.bin INPUT OUTPUT     one input and one output
 *   linger-engine MODEL.bin IN1 IN2 ... -- OUT1 OUT2 ...
 *   linger-engine --check FILE...            open each file, run it on zeros, print the status
 *
 * Inputs and outputs are raw little-endian tensors in the model's dtype and shape, or .npy
 * files (read: the dtype and element count must match; written: the model's dtype and shape).
 * Exit status: 0 ok, 1 engine status, 2 usage or file error. This program uses the C library
 * (files, malloc for the buffers the engine asks for); the engine itself does not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linger_engine.h"

static const char *npy_descr(int32_t dt) {
    switch (dt) {
    case LE_INT8: return "|i1";
    case LE_INT16: return "<i2";
    case LE_INT32: return "<i4";
    case LE_INT64: return "<i8";
    case LE_FLOAT32: return "<f4";
    case LE_FLOAT64: return "<f8";
    case LE_BOOL: return "|b1";
    case LE_UINT8: return "|u1";
    case LE_UINT16: return "<u2";
    case LE_UINT32: return "<u4";
    case LE_UINT64: return "<u8";
    default: return "<f2";
    }
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static unsigned char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    buf = (unsigned char *)malloc((size_t)n + 16);   /* malloc: aligned for any type */
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

/* Copy an input file (raw or .npy) into the engine's input buffer. */
static int load_input(const char *path, const le_io_info *io) {
    size_t n, off = 0;
    unsigned char *data = read_file(path, &n);
    int ok;
    if (!data) {
        fprintf(stderr, "linger-engine: cannot read input '%s'\n", path);
        return 0;
    }
    if (ends_with(path, ".npy")) {
        size_t hl;
        char header[1024];
        if (n < 10 || memcmp(data, "\x93NUMPY", 6) != 0) {
            fprintf(stderr, "linger-engine: '%s' is not a .npy file\n", path);
            free(data);
            return 0;
        }
        hl = data[6] == 1 ? (size_t)(data[8] | (data[9] << 8)) : 0;
        off = 10 + hl;
        if (data[6] != 1 || off > n || hl >= sizeof header) {
            fprintf(stderr, "linger-engine: '%s': unsupported .npy version\n", path);
            free(data);
            return 0;
        }
        memcpy(header, data + 10, hl);
        header[hl] = 0;
        if (!strstr(header, npy_descr(io->dtype)) || strstr(header, "'fortran_order': True")) {
            fprintf(stderr, "linger-engine: '%s' holds another dtype than %s (or Fortran order)\n",
                    path, npy_descr(io->dtype));
            free(data);
            return 0;
        }
    }
    ok = n - off == io->nbytes;
    if (ok) memcpy(io->data, data + off, io->nbytes);
    else
        fprintf(stderr, "linger-engine: input '%s' has %lu bytes, the model's input '%.*s' takes %lu\n",
                path, (unsigned long)(n - off), (int)io->name_len, io->name,
                (unsigned long)io->nbytes);
    free(data);
    return ok;
}

static int save_output(const char *path, const le_io_info *io) {
    FILE *f = fopen(path, "wb");
    int ok = 1, i;
    if (!f) {
        fprintf(stderr, "linger-engine: cannot write '%s'\n", path);
        return 0;
    }
    if (ends_with(path, ".npy")) {
        char header[256], shape[200] = "";
        size_t len;
        for (i = 0; i < io->ndim; i++) {
            char dim[32];
            sprintf(dim, "%lld,%s", (long long)io->dims[i], io->ndim > 1 && i < io->ndim - 1 ? " " : "");
            strcat(shape, dim);
        }
        if (io->ndim > 1) shape[strlen(shape) - 1] = 0;   /* "(2, 3)", "(5,)", "()" */
        sprintf(header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                npy_descr(io->dtype), shape);
        len = strlen(header);
        while ((10 + len + 1) % 64) header[len++] = ' ';
        header[len++] = '\n';
        ok = fwrite("\x93NUMPY\x01\x00", 1, 8, f) == 8 && fputc((int)(len & 255), f) != EOF
             && fputc((int)(len >> 8), f) != EOF && fwrite(header, 1, len, f) == len;
    }
    ok = ok && fwrite(io->data, 1, io->nbytes, f) == io->nbytes;
    return fclose(f) == 0 && ok;
}

static void report(const le_model *m, const char *what, le_status s) {
    const char *type = "", *name = "";
    uint32_t tl = 0, nl = 0;
    int32_t k = le_failed_op(m);
    if (k >= 0 && le_op_info(m, (uint32_t)k, &type, &tl, &name, &nl) == LE_OK)
        fprintf(stderr, "linger-engine: %s: %s (status %d) at op %d '%.*s' (%.*s)\n", what,
                le_status_name(s), (int)s, (int)k, (int)nl, name, (int)tl, type);
    else
        fprintf(stderr, "linger-engine: %s: %s (status %d)\n", what, le_status_name(s), (int)s);
}

/* Open, bind and (with inputs == NULL: on zeros) run one model; returns the engine status. */
static le_status run_model(const char *path, char **inputs, int n_in, char **outputs, int n_out,
                           int *file_error) {
    size_t size, k;
    unsigned char *file = read_file(path, &size);
    void *arenas[LE_MEM_COUNT] = {0}, *scratch = NULL;
    le_model m;
    le_status s;
    le_io_info io;
    *file_error = 0;
    if (!file) {
        fprintf(stderr, "linger-engine: cannot read model '%s'\n", path);
        *file_error = 1;
        return LE_OK;
    }
    s = le_open(&m, file, size, LE_TARGET_ANY);
    if (s != LE_OK) {
        report(&m, path, s);
        free(file);
        return s;
    }
    for (k = 0; k < LE_MEM_COUNT; k++)
        arenas[k] = le_arena_size(&m, (int)k) ? calloc(1, le_arena_size(&m, (int)k)) : NULL;
    scratch = le_scratch_size(&m) ? calloc(1, le_scratch_size(&m)) : NULL;
    s = le_bind(&m, arenas, scratch);
    if (s == LE_OK && inputs && (n_in != (int)le_num_io(&m, LE_INPUT)
                                 || n_out != (int)le_num_io(&m, LE_OUTPUT))) {
        fprintf(stderr, "linger-engine: the model takes %u inputs and gives %u outputs; got %d and %d"
                " file names\n", (unsigned)le_num_io(&m, LE_INPUT), (unsigned)le_num_io(&m, LE_OUTPUT), n_in, n_out);
        *file_error = 1;
    }
    for (k = 0; s == LE_OK && !*file_error && inputs && k < (size_t)n_in; k++) {
        le_io(&m, LE_INPUT, (uint32_t)k, &io);
        if (!load_input(inputs[k], &io)) *file_error = 1;
    }
    if (s == LE_OK && !*file_error) s = le_run(&m);
    if (s != LE_OK) report(&m, path, s);
    for (k = 0; s == LE_OK && !*file_error && outputs && k < (size_t)n_out; k++) {
        le_io(&m, LE_OUTPUT, (uint32_t)k, &io);
        if (!save_output(outputs[k], &io)) *file_error = 1;
    }
    for (k = 0; k < LE_MEM_COUNT; k++) free(arenas[k]);
    free(scratch);
    free(file);
    return s;
}

int main(int argc, char **argv) {
    int i, sep = -1, ferr;
    le_status s;
    if (argc >= 2 && strcmp(argv[1], "--check") == 0) {
        /* one line per file: "<status number> <file>" (a fuzzing driver) */
        for (i = 2; i < argc; i++) {
            s = run_model(argv[i], NULL, 0, NULL, 0, &ferr);
            printf("%d %s\n", ferr ? -1 : (int)s, argv[i]);
        }
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "--ops") == 0) {
        uint32_t k;
        for (k = 0; k < le_num_supported_ops(); k++) {
            const char *domain;
            const char *op = le_supported_op(k, &domain);
            printf("%s::%s\n", domain, op);
        }
        return 0;
    }
    for (i = 2; i < argc; i++)
        if (strcmp(argv[i], "--") == 0) sep = i;
    if (argc == 4 && sep < 0) {
        s = run_model(argv[1], &argv[2], 1, &argv[3], 1, &ferr);
    } else if (argc >= 3 && sep > 0) {
        s = run_model(argv[1], &argv[2], sep - 2, &argv[sep + 1], argc - sep - 1, &ferr);
    } else {
        fprintf(stderr, "usage: linger-engine MODEL.bin INPUT OUTPUT\n"
                        "       linger-engine MODEL.bin IN1 IN2 ... -- OUT1 OUT2 ...\n"
                        "       linger-engine --check FILE...\n"
                        "       linger-engine --ops\n"
                        "inputs/outputs: raw little-endian tensors or .npy files\n");
        return 2;
    }
    return ferr ? 2 : (s == LE_OK ? 0 : 1);
}
