/* Smallest program that links the whole engine (open, bind, run, outputs) and no C library I/O:
 * what arm-none-eabi-size reports for it, less an empty program's size, is the engine's code. */
#include "linger_engine.h"

extern const uint8_t le_size_model[];
static le_model model;

int main(void) {
    void *arenas[LE_MEM_COUNT] = {0};
    le_io_info io;
    if (le_open(&model, le_size_model, 64, LE_TARGET_ANY) != LE_OK) return 1;
    if (le_bind(&model, arenas, 0) != LE_OK) return 1;
    if (le_run(&model) != LE_OK) return (int)le_failed_op(&model);
    return le_io(&model, LE_OUTPUT, 0, &io) + (int)le_op_info(&model, 0, 0, 0, 0, 0);
}

/* model bytes for the link: this program measures code size and is never run */
const uint8_t le_size_model[64] __attribute__((aligned(8))) = {0};
