/* The C engine on a Cortex-M board: reads model.bin and input.bin through semihosting (the
 * host's files, as QEMU's -semihosting provides them), runs the model with static buffers only,
 * writes output.bin (the outputs, raw, one after the other) and prints the status.
 * Build and run: linger/engine/mcu.py. */
#include <stdio.h>
#include <string.h>

#include "linger_engine.h"

#ifndef LE_FILE_BYTES
#define LE_FILE_BYTES (256 * 1024)
#endif
#ifndef LE_ARENA_BYTES
#define LE_ARENA_BYTES (256 * 1024)
#endif

static uint64_t file_buf[LE_FILE_BYTES / 8];
static uint64_t arena_buf[LE_ARENA_BYTES / 8];
static le_model model;

static long read_all(const char *path, void *buf, long cap) {
    FILE *f = fopen(path, "rb");
    long n;
    if (!f) return -1;
    n = (long)fread(buf, 1, (size_t)cap, f);
    if (n == cap && fgetc(f) != EOF) n = -2;   /* does not fit */
    fclose(f);
    return n;
}

int main(void) {
    void *arenas[LE_MEM_COUNT] = {0};
    uint8_t *cursor = (uint8_t *)arena_buf;
    size_t left = sizeof arena_buf;
    long n;
    uint32_t k;
    le_status s;
    le_io_info io;
    FILE *out;
    int m;
    n = read_all("model.bin", file_buf, (long)sizeof file_buf);
    if (n < 0) {
        printf("mcu: cannot read model.bin (%ld)\n", n);
        return 2;
    }
    s = le_open(&model, file_buf, (size_t)n, LE_TARGET_ANY);
    if (s != LE_OK) {
        printf("mcu: le_open: %s (op %d)\n", le_status_name(s), (int)le_failed_op(&model));
        return 1;
    }
    for (m = 0; m < LE_MEM_COUNT; m++) {   /* carve the arenas out of one static buffer */
        size_t need = (le_arena_size(&model, m) + 15u) & ~(size_t)15u;
        if (need > left) {
            printf("mcu: arenas need more than %u bytes\n", (unsigned)sizeof arena_buf);
            return 2;
        }
        arenas[m] = need ? cursor : NULL;
        cursor += need;
        left -= need;
    }
    if (le_scratch_size(&model) > left) {
        printf("mcu: scratch does not fit\n");
        return 2;
    }
    s = le_bind(&model, arenas, le_scratch_size(&model) ? cursor : NULL);
    if (s == LE_OK) {
        le_io(&model, LE_INPUT, 0, &io);
        n = read_all("input.bin", io.data, (long)io.nbytes);
        if (n != (long)io.nbytes || le_num_io(&model, LE_INPUT) != 1) {
            printf("mcu: input.bin must hold the model's one input (%u bytes)\n",
                   (unsigned)io.nbytes);
            return 2;
        }
        s = le_run(&model);
    }
    if (s != LE_OK) {
        printf("mcu: %s (op %d)\n", le_status_name(s), (int)le_failed_op(&model));
        return 1;
    }
    out = fopen("output.bin", "wb");
    if (!out) return 2;
    for (k = 0; k < le_num_io(&model, LE_OUTPUT); k++) {
        le_io(&model, LE_OUTPUT, k, &io);
        fwrite(io.data, 1, io.nbytes, out);
    }
    fclose(out);
    printf("mcu: ok, %u ops, arenas %u+%u+%u bytes, scratch %u\n", (unsigned)le_num_ops(&model),
           (unsigned)le_arena_size(&model, 0), (unsigned)le_arena_size(&model, 1),
           (unsigned)le_arena_size(&model, 2), (unsigned)le_scratch_size(&model));
    return 0;
}
