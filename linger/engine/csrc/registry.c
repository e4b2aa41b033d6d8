/* The registry: every op family compiled into the engine. Build with -DLE_NO_<FAMILY> to leave
 * a family out (smaller code on a device whose models do not use it); a model using an op that
 * is left out is refused by le_open with LE_ERR_UNSUPPORTED_OP. */
#include "le_internal.h"

#define FAMILY(name)                                                                           \
    extern const le_op_entry le_ops_##name[];                                                  \
    extern const uint32_t le_ops_##name##_count;
FAMILY(quant)
FAMILY(conv)
FAMILY(linear)
FAMILY(pool)
FAMILY(iqarith)
FAMILY(nonlinear)
FAMILY(rnn)
FAMILY(elementwise)
FAMILY(layout)
FAMILY(act)
FAMILY(reduce)
FAMILY(resample)
FAMILY(mask)
FAMILY(luna)
#undef FAMILY

#define ENTRY(name) {#name, le_ops_##name, &le_ops_##name##_count}

const le_family le_families[] = {
    ENTRY(quant),
    ENTRY(layout),
    ENTRY(elementwise),
#ifndef LE_NO_CONV
    ENTRY(conv),
#endif
#ifndef LE_NO_LINEAR
    ENTRY(linear),
#endif
#ifndef LE_NO_POOL
    ENTRY(pool),
#endif
#ifndef LE_NO_IQARITH
    ENTRY(iqarith),
#endif
#ifndef LE_NO_NONLINEAR
    ENTRY(nonlinear),
#endif
#ifndef LE_NO_RNN
    ENTRY(rnn),
#endif
#ifndef LE_NO_ACT
    ENTRY(act),
#endif
#ifndef LE_NO_REDUCE
    ENTRY(reduce),
#endif
#ifndef LE_NO_RESAMPLE
    ENTRY(resample),
#endif
#ifndef LE_NO_MASK
    ENTRY(mask),
#endif
#ifndef LE_NO_LUNA
    ENTRY(luna),
#endif
};
const uint32_t le_num_families = sizeof le_families / sizeof le_families[0];
