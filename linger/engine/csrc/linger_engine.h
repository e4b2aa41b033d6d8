/* linger C engine: runs a model packed by `linger pack` (the LINGERPK file, format version 1)
 * bit for bit as linger's numpy runtime and PyTorch eval() do.
 *
 * C99, no malloc, only <stdint.h>, <stddef.h> and <string.h> (memcpy/memset/memmove/memcmp).
 * The caller owns every byte of memory:
 *
 *     le_model m;
 *     le_status s = le_open(&m, file, file_size, LE_TARGET_ANY);  // validates the whole file
 *     // one buffer per memory the packer planned (share-memory, PSRAM), plus scratch
 *     void *arenas[LE_MEM_COUNT] = {0};
 *     for (k = 0; k < LE_MEM_COUNT; k++) arenas[k] = my_buffer(le_arena_size(&m, k));
 *     s = le_bind(&m, arenas, my_buffer(le_scratch_size(&m)));
 *     le_io(&m, LE_INPUT, 0, &info);  memcpy(info.data, input, info.nbytes);
 *     s = le_run(&m);
 *     le_io(&m, LE_OUTPUT, 0, &info);  // info.data holds the output
 *
 * Parameters are used in place from the file buffer (zero-copy: the file may sit in flash).
 * The file buffer and every arena must be 8-byte aligned. Every entry point returns a status
 * code; a damaged file is refused by le_open with a status, never a crash. */
#ifndef LINGER_ENGINE_H
#define LINGER_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Memories, in the order of linger.targets.MEMORY_KINDS (the file's memory codes). */
#define LE_MEM_FLASH 0
#define LE_MEM_PSRAM 1
#define LE_MEM_SHARE 2
#define LE_MEM_COUNT 3

#define LE_FORMAT_VERSION 1
#define LE_TARGET_ANY (-1)
#define LE_MAX_DIMS 8

typedef enum {
    LE_OK = 0,
    LE_ERR_ARG = 1,             /* NULL pointer, index out of range, misaligned buffer */
    LE_ERR_TRUNCATED = 2,       /* the buffer is shorter (or longer) than the file says */
    LE_ERR_MAGIC = 3,           /* not a linger packed model */
    LE_ERR_VERSION = 4,         /* a format version this engine does not read */
    LE_ERR_TARGET = 5,          /* packed for another target */
    LE_ERR_CRC = 6,             /* a checksum does not match: corrupted bytes */
    LE_ERR_FORMAT = 7,          /* a record, count, offset or length is out of bounds */
    LE_ERR_UNSUPPORTED_OP = 8,  /* an op this engine does not implement */
    LE_ERR_ATTR = 9,            /* an attribute is missing, unknown, or out of range */
    LE_ERR_SHAPE = 10,          /* an op's tensors have dtypes/shapes that do not fit it */
    LE_ERR_INPUT = 11,          /* an input value the op cannot take (NaN, index, length) */
    LE_ERR_STATE = 12           /* le_run/le_io before le_bind, or after a failed le_open */
} le_status;

/* Element types: the file's dtype codes (linger.packfile.format.DTYPES). */
enum {
    LE_INT8 = 1, LE_INT16 = 2, LE_INT32 = 3, LE_INT64 = 4, LE_FLOAT32 = 5, LE_FLOAT64 = 6,
    LE_BOOL = 7, LE_UINT8 = 8, LE_UINT16 = 9, LE_UINT32 = 10, LE_UINT64 = 11, LE_FLOAT16 = 12
};

#define LE_INPUT 0
#define LE_OUTPUT 1

/* A loaded model. Fields are private; the struct is public so that it can be static. */
typedef struct {
    const uint8_t *file;
    size_t size;
    int32_t target_id;
    uint32_t strs_off, strs_len;
    uint32_t tens_off, n_tensors;
    uint32_t oper_off, oper_end, n_ops;
    uint32_t io_off, io_end, n_inputs, n_outputs;
    uint64_t peak[LE_MEM_COUNT];         /* highest planned byte per memory */
    uint64_t base[LE_MEM_COUNT];         /* parameters' bytes before the activations */
    uint8_t planned[LE_MEM_COUNT];
    uint64_t blob_off[LE_MEM_COUNT];     /* parameter blob per memory, in the file */
    uint64_t blob_len[LE_MEM_COUNT];
    uint8_t has_blob[LE_MEM_COUNT];
    uint8_t *arena[LE_MEM_COUNT];
    uint8_t *scratch;
    size_t scratch_size;
    int32_t failed_op;                   /* op index of the last failure, -1 if none */
    int state;                           /* 0 closed, 1 opened, 2 bound */
} le_model;

/* A graph input or output. */
typedef struct {
    void *data;                          /* NULL before le_bind */
    size_t nbytes;
    int32_t dtype;                       /* LE_INT8 ... */
    int32_t ndim;
    int64_t dims[LE_MAX_DIMS];
    const char *name;                    /* not NUL-terminated: name_len bytes */
    uint32_t name_len;
} le_io_info;

/* Validate the whole file (header, checksums, sections, every record, every op's attributes,
 * dtypes and shapes) and compute the memory it needs. target_id: the target the file must
 * have been packed for, or LE_TARGET_ANY. */
le_status le_open(le_model *m, const void *file, size_t size, int32_t target_id);

/* Bytes of activation memory the caller provides for memory `mem` (0 where none is planned). */
size_t le_arena_size(const le_model *m, int mem);

/* Bytes of scratch memory the kernels need (recurrent state, gates); may be 0. */
size_t le_scratch_size(const le_model *m);

/* Give the engine its memory: arenas[mem] of le_arena_size(m, mem) bytes each (NULL where the
 * size is 0) and the scratch buffer. All 8-byte aligned. */
le_status le_bind(le_model *m, void *const arenas[LE_MEM_COUNT], void *scratch);

uint32_t le_num_io(const le_model *m, int which);
le_status le_io(const le_model *m, int which, uint32_t k, le_io_info *info);

/* Run every op in order. On failure, le_failed_op() names the op. Write the inputs before
 * every le_run: the planner reuses an input's bytes once the op reading it has run. */
le_status le_run(le_model *m);

uint32_t le_num_ops(const le_model *m);
int32_t le_failed_op(const le_model *m);
/* op_type and name of op k (not NUL-terminated); LE_ERR_ARG for a bad k. */
le_status le_op_info(const le_model *m, uint32_t k, const char **op_type, uint32_t *type_len,
                     const char **name, uint32_t *name_len);

const char *le_status_name(le_status s);

/* sizeof(le_model), for bindings from other languages */
size_t le_sizeof_model(void);

/* The ops this engine implements, as "domain::op_type" (domain "ai.onnx" for standard ops). */
uint32_t le_num_supported_ops(void);
const char *le_supported_op(uint32_t k, const char **domain);

/* Optional fast paths compiled into this build (bit mask; the integers are the same with or
 * without them): LE_FAST_X86_CONV, int8 convolutions as an AVX2 GEMM (built with -mavx2 or
 * -march=native on such a CPU, without -DLE_PORTABLE). */
#define LE_FAST_X86_CONV 1u
uint32_t le_fast_paths(void);

#ifdef __cplusplus
}
#endif
#endif
