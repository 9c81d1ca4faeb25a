/* deepshrink's integer kernels for microcontrollers (C99, <stdint.h> only, no allocation).
 *
 * The code generator copies the sections a model needs into its model.c, in the order they appear here.
 * A section starts with a "@kernel NAME needs=A,B" line and runs to the next one.
 *
 * Arithmetic reproduces ONNX Runtime's CPU kernels (MLAS) so that a model computes here what it computed
 * when it was validated: int32 accumulation of int8 x int8 products, then requantization in float32 as
 * MlasRequantizeOutput does it (scale product, clamp, round half to even, add the zero point).
 * Activations are int8 (ONNX Runtime's uint8 values minus 128: the same integers, shifted, so every clamp
 * and zero point moves with them); weights int8 with zero point 0; biases int32 with the input zero point
 * folded in (bias - zp_x * sum(w)), so the inner loops multiply raw int8 values.
 *
 * On a Cortex-M4/M7 (__ARM_FEATURE_DSP) the dot products use the DSP extension: SXTB16 widens two int8
 * lanes of a word to int16 and SMLAD multiplies and accumulates both pairs in one instruction; each
 * activation word is loaded and widened once for four weight rows. Elsewhere a portable loop computes the
 * same integers.
 */

/* @kernel base */
#if defined(__GNUC__) || defined(__clang__)
#define DS_ALIGN4 __attribute__((aligned(4)))
#else
#define DS_ALIGN4
#endif

#if defined(__ARM_FEATURE_DSP) && (defined(__GNUC__) || defined(__clang__))
#define DS_DSP 1
#else
#define DS_DSP 0
#endif

/* Per-channel requantization of a layer's int32 accumulators (bias already includes -zp_x*sum(w)). */
typedef struct {
    const int32_t *bias;
    const float *mult; /* x_scale * w_scale[c] / y_scale, as ONNX Runtime computes it in float32 */
    int8_t zp;         /* output zero point; a ReLU is the clamp at it (ONNX Runtime's quantizer removes ReLUs) */
} ds_q_t;

#if DS_DSP && defined(__ARM_FP)
/* The same result in 7 instructions: VCVTR rounds half to even (the FPSCR's default mode) and saturates,
 * QADD and SSAT clamp; rounding before clamping changes nothing when the bounds are integers. */
static int8_t ds_requant(int32_t acc, float m, int32_t zp)
{
    float f = (float)acc * m;
    int32_t r;
    __asm__("vcvtr.s32.f32 %[f], %[f]\n\t"
            "vmov %[r], %[f]\n\t"
            "qadd %[r], %[r], %[zp]\n\t"
            "ssat %[r], #8, %[r]"
            : [r] "=&r"(r), [f] "+t"(f)
            : [zp] "r"(zp));
    return (int8_t)r;
}
#else
/* round(f) half to even for |f| < 2^22: adding 1.5 * 2^23 leaves the integer in the low mantissa bits. */
static int32_t ds_round(float f)
{
    union { float f; int32_t i; } u;
    u.f = f + 12582912.0f;
    return u.i - 0x4B400000;
}

/* MlasRequantizeOutput: float product, clamp in float to the output range, round half to even, add zp. */
static int8_t ds_requant(int32_t acc, float m, int32_t zp)
{
    float f = (float)acc * m;
    const float flo = (float)(-128 - zp);
    const float fhi = (float)(127 - zp);
    if (f < flo) {
        f = flo;
    }
    if (f > fhi) {
        f = fhi;
    }
    return (int8_t)(ds_round(f) + zp);
}
#endif

/* @kernel dot needs=base */
/* Dot products of one activation vector with weight rows of kp bytes (kp a multiple of 4), 4 rows at a
 * time (then 2, then 1). Rows are interleaved in flash by 4-byte blocks: for 4 rows, block k holds bytes
 * 4k..4k+3 of row 0, then of rows 1, 2 and 3, so one pointer walks the weights in order and a doubleword
 * load fetches two rows.
 *
 * Two activation forms: int8 (a layer's input as it is: each word is widened in the loop, once for all
 * rows: SXTB16 gives lanes (x0, x2) and (x1, x3), matching the weights' own SXTB16 lanes), and int16 (a
 * convolution's column, widened once by im2col: a doubleword load gives (x0, x1), (x2, x3), so those
 * layers store each weight block as w0 w2 w1 w3, whose SXTB16 lanes are (w0, w1) and (w2, w3)). */
#if DS_DSP
#define DS_X8                                                                                               \
    "ldr %[xa], [%[x]], #4\n\t"                                                                             \
    "sxtb16 %[xb], %[xa], ror #8\n\t"                                                                       \
    "sxtb16 %[xa], %[xa]\n\t"
#define DS_X16 "ldrd %[xa], %[xb], [%[x]], #8\n\t"
#define DS_ROW(A, W)                                                                                        \
    "sxtb16 %[t], %[" W "]\n\t"                                                                             \
    "sxtb16 %[" W "], %[" W "], ror #8\n\t"                                                                 \
    "smlad %[" A "], %[xa], %[t], %[" A "]\n\t"                                                             \
    "smlad %[" A "], %[xb], %[" W "], %[" A "]\n\t"
#define DS_W4 "ldrd %[wa], %[wb], [%[w]], #8\n\t" DS_ROW("a0", "wa") DS_ROW("a1", "wb")                    \
    "ldrd %[wa], %[wb], [%[w]], #8\n\t" DS_ROW("a2", "wa") DS_ROW("a3", "wb")
#define DS_W2 "ldrd %[wa], %[wb], [%[w]], #8\n\t" DS_ROW("a0", "wa") DS_ROW("a1", "wb")
#define DS_W1 "ldr %[wa], [%[w]], #4\n\t" DS_ROW("a0", "wa")
#define DS_OPERANDS                                                                                         \
    [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [x] "+r"(x), [w] "+r"(w), [n] "+r"(n),   \
        [xa] "=&r"(xa), [xb] "=&r"(xb), [wa] "=&r"(wa), [wb] "=&r"(wb), [t] "=&r"(t)
/* Two blocks per iteration: the loop's subs/bne then costs 2 instructions per 32 multiply-accumulates. */
#define DS_LOOP(BLOCK)                                                                                      \
    do {                                                                                                    \
        const XT *x = x0;                                                                                   \
        uint32_t xa, xb, wa, wb, t;                                                                         \
        int n = nblk >> 1;                                                                                  \
        a0 = a1 = a2 = a3 = 0;                                                                              \
        if (n > 0) {                                                                                        \
            __asm__ volatile("1:\n\t" BLOCK BLOCK "subs %[n], %[n], #1\n\t"                                 \
                             "bne 1b\n\t" : DS_OPERANDS : : "cc", "memory");                                \
        }                                                                                                   \
        if (nblk & 1) {                                                                                     \
            __asm__ volatile(BLOCK : DS_OPERANDS : : "memory");                                             \
        }                                                                                                   \
    } while (0)
#define DS_GROUP(XLOAD)                                                                                     \
    if (rows - r >= 4) {                                                                                    \
        DS_LOOP(XLOAD DS_W4);                                                                               \
        g = 4;                                                                                              \
    } else if (rows - r >= 2) {                                                                             \
        DS_LOOP(XLOAD DS_W2);                                                                               \
        g = 2;                                                                                              \
    } else {                                                                                                \
        DS_LOOP(XLOAD DS_W1);                                                                               \
        g = 1;                                                                                              \
    }
#else
#define DS_GROUP(XLOAD)                                                                                     \
    do {                                                                                                    \
        const XT *x = x0;                                                                                   \
        int32_t a[4];                                                                                       \
        int k, j;                                                                                           \
        a[0] = a[1] = a[2] = a[3] = 0;                                                                      \
        g = rows - r >= 4 ? 4 : rows - r >= 2 ? 2 : 1;                                                      \
        for (k = 0; k < nblk; k++, x += 4) {                                                                \
            for (j = 0; j < g; j++, w += 4) {                                                               \
                a[j] += XLOAD;                                                                              \
            }                                                                                               \
        }                                                                                                   \
        a0 = a[0];                                                                                          \
        a1 = a[1];                                                                                          \
        a2 = a[2];                                                                                          \
        a3 = a[3];                                                                                          \
    } while (0)
#define DS_X8 x[0] * w[0] + x[1] * w[1] + x[2] * w[2] + x[3] * w[3]
#define DS_X16 x[0] * w[0] + x[1] * w[2] + x[2] * w[1] + x[3] * w[3]
#endif

/* The accumulators of `rows` weight rows against x0 into out (a group's own lanes only: rows of 4 + 2 + 1
 * must not write past the seventh). Returns the weights' end. */
#define DS_DOTS(NAME, XLOAD)                                                                                \
    static const int8_t *NAME(const XT *x0, const int8_t *w, int nblk, int rows, int32_t *out)             \
    {                                                                                                       \
        int32_t a0, a1, a2, a3;                                                                             \
        int r, g;                                                                                           \
        for (r = 0; r < rows; r += g, out += g) {                                                           \
            DS_GROUP(XLOAD);                                                                                \
            out[0] = a0;                                                                                    \
            if (g > 1) {                                                                                    \
                out[1] = a1;                                                                                \
            }                                                                                               \
            if (g > 2) {                                                                                    \
                out[2] = a2;                                                                                \
                out[3] = a3;                                                                                \
            }                                                                                               \
        }                                                                                                   \
        return w;                                                                                           \
    }

/* @kernel dot8 needs=dot */
#define XT int8_t
DS_DOTS(ds_dots8, DS_X8)
#undef XT

/* @kernel dot16 needs=dot */
#define XT int16_t
DS_DOTS(ds_dots16, DS_X16)
#undef XT

/* @kernel fc needs=dot8 */
typedef struct {
    const int8_t *w; /* n_out rows of kp bytes, zero-padded and interleaved (see ds_dot) */
    ds_q_t q;
    int16_t kp, n_out;
} ds_fc_t;

static void ds_fc(const ds_fc_t *p, const int8_t *x, int8_t *y)
{
    const int32_t *const bias = p->q.bias;
    const float *const mult = p->q.mult;
    const int n = p->n_out, nblk = p->kp >> 2, zp = p->q.zp;
    const int8_t *w = p->w;
    int32_t acc[4];
    int r, i;
    /* Four rows at a time: an accumulator per output for the whole layer would cost 4 bytes of RAM each. */
    for (r = 0; r < n; r += 4) {
        const int g = n - r >= 4 ? 4 : n - r;
        w = ds_dots8(x, w, nblk, g, acc);
        for (i = 0; i < g; i++) {
            y[r + i] = ds_requant(acc[i] + bias[r + i], mult[r + i], zp);
        }
    }
}

/* @kernel fma needs=base */
/* A fused multiply-add (one rounding), as ONNX Runtime's AVX2 kernels compute QLinearAdd: VFMA.F32 on a
 * Cortex-M4F, the C library's fmaf elsewhere. */
#if defined(__GNUC__) || defined(__clang__)
#define ds_fmaf __builtin_fmaf
#else
float fmaf(float, float, float);
#define ds_fmaf fmaf
#endif

/* round half to even of a float clamped to [lo - 1, hi + 1], then clamped to [lo, hi] */
static int32_t ds_round_clamp(float t, int32_t lo, int32_t hi)
{
    union { float f; int32_t i; } u;
    int32_t q;
    const float flo = (float)(lo - 1), fhi = (float)(hi + 1);
    if (t < flo) {
        t = flo;
    }
    if (t > fhi) {
        t = fhi;
    }
    u.f = t + 12582912.0f;
    q = u.i - 0x4B400000;
    return q < lo ? lo : q > hi ? hi : q;
}

/* @kernel addq needs=fma */
/* Element-wise addition of two quantized tensors (a residual connection), as ONNX Runtime's QLinearAdd.
 * Its arithmetic uses the zero points as stored (uint8 tensors: our int8 values + 128), so `off` moves
 * values back there and the result down again. A convolution whose output feeds an addition computes it
 * pixel by pixel (ds_conv), writing over the other operand in place. */
typedef struct {
    float ra, rb;        /* a_scale / y_scale, b_scale / y_scale */
    int16_t za, zb, zy;  /* zero points in ONNX Runtime's domain */
    int16_t off;         /* 128 for uint8 tensors, 0 for int8 */
    int32_t n;
} ds_add_t;

/* The part of the sum that does not depend on the values, rounded as ONNX Runtime rounds it. */
static float ds_add_fixed(const ds_add_t *p)
{
    const float prod_b = p->rb * (float)p->zb;
    return (float)p->zy - ds_fmaf(p->ra, (float)p->za, prod_b);
}

static int8_t ds_add_one(const ds_add_t *p, float fixed, int32_t a, int32_t b)
{
    float t = ds_fmaf((float)(b + p->off), p->rb, fixed);
    t = ds_fmaf((float)(a + p->off), p->ra, t);
    return (int8_t)(ds_round_clamp(t, -128 + p->off, 127 + p->off) - p->off);
}

/* @kernel add needs=addq */
static void ds_add(const ds_add_t *p, const int8_t *a, const int8_t *b, int8_t *y)
{
    const float fixed = ds_add_fixed(p);
    int32_t i;
    for (i = 0; i < p->n; i++) {
        y[i] = ds_add_one(p, fixed, a[i], b[i]);
    }
}

/* @kernel sparse needs=base */
/* Pruned weights read in place, one row after another, only the non-zeros. Each is an entry: a gap (the
 * positions skipped since the previous non-zero of the row) and a value. Two forms:
 *   16-bit entries: gap (8 bits), then the int8 weight itself;
 *   12-bit entries, two per 3 bytes: gap (G bits), then a code (12 - G bits) into the layer's int8 codebook
 *   (clustered weights: Deep Compression's shared values).
 * A gap too long for its field is bridged by filler entries (the longest gap, value 0 or code 0). A 16-bit
 * filler adds 0; a 12-bit filler adds code 0's product, which the compensation list takes back before its
 * row starts: (row, position, code) triples in row order, ending with row -1.
 * The activations are a layer's int8 input (fully connected) or a convolution's int16 column; a layer
 * requantizes each row into y, a convolution (y null) keeps the raw accumulators in acc. */
typedef struct {
    const uint8_t *e;       /* entries, then 3 bytes of padding (word loads read ahead) */
    const void *count;      /* entries per row (fillers included): uint8_t, or uint16_t where one exceeds 255 */
    const int8_t *cb;       /* the codebook (12-bit entries) */
    const int16_t *comp;    /* fillers' compensation (12-bit entries) */
    ds_q_t q;               /* its bias: see bias_bytes */
    int16_t n_out;
    uint8_t per_channel;    /* a multiplier per row, else one for the layer */
    uint8_t bias_bytes;     /* q.bias holds 2-, 3- or 4-byte integers: the fewest the layer's biases fit */
} ds_sparse_t;

/* Bit-packed weights read in place (2- or 4-bit weights, as `quantize:bits=` stores them): each row's
 * codes in order, BITS each, little-endian within a byte, sign-extended as they are read. */
typedef struct {
    const uint8_t *w;       /* rows of ceil(k * BITS / 8) bytes */
    ds_q_t q;
    int16_t n_out, k;
    uint8_t per_channel;
} ds_packed_t;

/* Bias r of a layer whose biases take bb_ bytes each (2, 3 or 4; locals bias_ and bb_ hoisted per call). */
#define DS_BIAS(r)                                                                                          \
    (bb_ == 4 ? bias_[r] : bb_ == 2 ? ((const int16_t *)(const void *)bias_)[r]                             \
              : ds_int24((const uint8_t *)(const void *)bias_ + 3 * (r)))
#define DS_BIAS_LOCALS                                                                                      \
    const int32_t *const bias_ = p->q.bias;                                                                 \
    const int32_t bb_ = p->bias_bytes;

/* The activation loads of each element type: pointer step and the sign-extending load (DSP inline asm). */
#define DS_LD_int8_t "ldrsb"
#define DS_SH_int8_t ""
#define DS_SZ_int8_t "1"
#define DS_LD_int16_t "ldrsh"
#define DS_SH_int16_t ", lsl #1"
#define DS_SZ_int16_t "2"
#define DS_STR2(v) #v
#define DS_STR(v) DS_STR2(v)

/* One row's output: requantized into y (a layer), or the raw accumulator into acc (a convolution). */
#define DS_ROW_OUT()                                                                                        \
    if (y) {                                                                                                \
        y[r] = ds_requant(acc, *mult, zp);                                                                  \
    } else {                                                                                                \
        out[r] = acc;                                                                                       \
    }

/* @kernel conv needs=dot16,addq,sparse */
typedef struct {
    const int8_t *w; /* per group: out_c/groups rows of kp bytes, as ds_fc's, blocks ordered w0 w2 w1 w3 */
    ds_q_t q;
    int16_t in_h, in_w, in_c, out_c;  /* input geometry (H x W x C, or C x H x W when chw), filters */
    int16_t kh, kw, sh, sw, pt, pl;   /* kernel, stride, top and left padding */
    int16_t groups, kp;               /* column length per group, padded to a multiple of 4 */
    int16_t pool_k, pool_s;           /* max pooling fused behind the convolution (1, 1: none) */
    int16_t out_h, out_w;             /* output geometry, after pooling */
    int8_t in_zp;                     /* padding value: the input's zero point (a float 0) */
    uint8_t chw;                      /* input in C x H x W order (the network input); else H x W x C */
    int16_t slice, ncols;             /* C x H x W: values per input column (even), padded input width */
    int32_t rowlen;                   /* C x H x W: int16 values of one output row's slices */
    const ds_add_t *add;              /* an addition fused behind: y holds its other operand, overwritten */
    uint8_t add_first;                /* the convolution is the addition's first operand */
    const void *sparse;               /* weights in place (ds_sparse_t or ds_packed_t; then w is 0), rows run
                                       * by ds_conv's `rows` */
} ds_conv_t;

/* n int8 values widened to int16: eight per iteration on the DSP (SXTB16 splits even and odd lanes, two
 * half-word packs put them back in order). */
static void ds_widen(int16_t *d, const int8_t *s, int n)
{
#if DS_DSP
    uint32_t v, u, a, b;
    for (; n >= 8; n -= 8) {
        __asm__ volatile("ldr %[v], [%[s]], #4\n\t"
                         "ldr %[u], [%[s]], #4\n\t"
                         "sxtb16 %[a], %[v]\n\t"
                         "sxtb16 %[b], %[v], ror #8\n\t"
                         "pkhbt %[v], %[a], %[b], lsl #16\n\t"
                         "pkhtb %[a], %[b], %[a], asr #16\n\t"
                         "str %[v], [%[d]], #4\n\t"
                         "str %[a], [%[d]], #4\n\t"
                         "sxtb16 %[a], %[u]\n\t"
                         "sxtb16 %[b], %[u], ror #8\n\t"
                         "pkhbt %[u], %[a], %[b], lsl #16\n\t"
                         "pkhtb %[a], %[b], %[a], asr #16\n\t"
                         "str %[u], [%[d]], #4\n\t"
                         "str %[a], [%[d]], #4\n\t"
                         : [v] "=&r"(v), [u] "=&r"(u), [a] "=&r"(a), [b] "=&r"(b), [s] "+r"(s), [d] "+r"(d)
                         :
                         : "memory");
    }
#endif
    for (; n > 0; n--) {
        *d++ = *s++;
    }
}

static void ds_fill(int16_t *d, int16_t v, int n)
{
    for (; n > 0; n--) {
        *d++ = v;
    }
}

/* H x W x C input: the receptive field of output (oy, ox), group g, as one int16 column in (ky, kx, c)
 * order (the weights' order). A window inside the image is copied a kernel row at a time (kw * C
 * contiguous bytes without groups); a window over the padding reads the zero point there. The column's
 * tail up to kp is zero. Parameters are copied to locals: stores through the column may alias anything to
 * the compiler, which would otherwise reload each field after every store. */
static void ds_im2col(const ds_conv_t *p, const int8_t *x, int g, int oy, int ox, int16_t *col)
{
    const int in_h = p->in_h, in_w = p->in_w, in_c = p->in_c, kh = p->kh, kw = p->kw;
    const int cg = in_c / p->groups;
    const int iy0 = oy * p->sh - p->pt, ix0 = ox * p->sw - p->pl;
    int16_t *c = col;
    int ky, kx;
    if (iy0 >= 0 && iy0 + kh <= in_h && ix0 >= 0 && ix0 + kw <= in_w && cg == in_c) {
        const int8_t *row = x + (iy0 * in_w + ix0) * in_c;
        for (ky = 0; ky < kh; ky++, c += kw * in_c, row += in_w * in_c) {
            ds_widen(c, row, kw * in_c);
        }
    } else {
        for (ky = 0; ky < kh; ky++) {
            const int iy = iy0 + ky;
            for (kx = 0; kx < kw; kx++, c += cg) {
                const int ix = ix0 + kx;
                if (iy >= 0 && iy < in_h && ix >= 0 && ix < in_w) {
                    ds_widen(c, x + (iy * in_w + ix) * in_c + g * cg, cg);
                } else {
                    ds_fill(c, p->in_zp, cg);
                }
            }
        }
    }
    ds_fill(c, 0, p->kp - (int)(c - col));
}

/* C x H x W input (the network's, a few channels): the slices of output row oy, group g. A slice is one
 * padded input column's C * kh values in (c, ky) order, padded to an even count; the column of output ox
 * is then kw consecutive slices starting at slice ox * sw, read in place (order (kx, c, ky), the weights'
 * order). One pass over the rows an output row needs replaces a gather per output. */
static void ds_slices(const ds_conv_t *p, const int8_t *x, int g, int oy, int16_t *b)
{
    const int in_h = p->in_h, in_w = p->in_w, kh = p->kh, cg = p->in_c / p->groups, pl = p->pl;
    const int iy0 = oy * p->sh - p->pt;
    const int odd = (cg * kh) & 1;
    const int16_t zp = p->in_zp;
    int16_t *const end = b + p->rowlen;
    int ix, ch, ky;
    const int rows_inside = iy0 >= 0 && iy0 + kh <= in_h;
    for (ix = -pl; ix < p->ncols - pl; ix++) {
        const int col_inside = ix >= 0 && ix < in_w;
        for (ch = 0; ch < cg; ch++) {
            const int8_t *plane = x + (g * cg + ch) * in_h * in_w;
            if (col_inside && rows_inside) {
                const int8_t *src = plane + iy0 * in_w + ix;
                for (ky = 0; ky < kh; ky++, src += in_w) {
                    *b++ = *src;
                }
                continue;
            }
            for (ky = 0; ky < kh; ky++) {
                const int iy = iy0 + ky;
                *b++ = (col_inside && iy >= 0 && iy < in_h) ? plane[iy * in_w + ix] : zp;
            }
        }
        if (odd) {
            *b++ = 0;
        }
    }
    ds_fill(b, 0, (int)(end - b));
}

/* Convolution (any groups, stride, padding), output H x W x C. With fused max pooling, each output is the
 * largest accumulator of its window, requantized: requantization is monotonic, so that is the max of the
 * requantized values, exactly, at a fraction of the requantizations. col: kp int16 for an H x W x C input,
 * pool_k rows of rowlen for a C x H x W one; acc: pool_k^2 accumulators per output channel of a group,
 * rounded up to 4. */
typedef void (*ds_rows_fn)(const void *, const int16_t *, int8_t *, int32_t *);
typedef void (*ds_cols_fn)(const void *, const int16_t *, int32_t, int32_t *);

/* cols4: an in-place kernel taking a 2 x 2 pooling window's four columns at once (kp apart), or 0. */
static void ds_conv(const ds_conv_t *p, ds_rows_fn rows, ds_cols_fn cols4, const int8_t *x, int8_t *y, int16_t *col,
                    int32_t *acc)
{
    const int groups = p->groups, out_c = p->out_c, cg = out_c / groups, pk = p->pool_k, ps = p->pool_s;
    const int out_h = p->out_h, out_w = p->out_w, nblk = p->kp >> 2, npos = pk * pk, chw = p->chw;
    const int step = p->sw * p->slice, zp = p->q.zp, stride = (cg + 3) & ~3;
    const int32_t rowlen = p->rowlen;
    const ds_add_t *const add = p->add;
    const float fixed = add ? ds_add_fixed(add) : 0.0f;
    int py, px, g, d, i;
    for (g = 0; g < groups; g++) {
        const int8_t *w = p->w ? p->w + g * cg * p->kp : 0;
        const int32_t *bias = p->q.bias + g * cg;
        const float *mult = p->q.mult + g * cg;
        for (py = 0; py < out_h; py++) {
            for (d = 0; chw && d < pk; d++) {
                ds_slices(p, x, g, py * ps + d, col + d * rowlen);
            }
            for (px = 0; px < out_w; px++) {
                int8_t *out = y + (py * out_w + px) * out_c + g * cg;
                if (cols4) {  /* the window's columns side by side, one pass over the entries */
                    for (d = 0; d < 4; d++) {
                        ds_im2col(p, x, g, py * ps + d / 2, px * ps + d % 2, col + d * p->kp);
                    }
                    cols4(p->sparse, col, stride, acc);
                }
                for (d = 0; !cols4 && d < npos; d++) {
                    const int dy = d / pk, ox = px * ps + d % pk;
                    const int16_t *c = col + dy * rowlen + ox * step;
                    if (!chw) {
                        ds_im2col(p, x, g, py * ps + dy, ox, col);
                        c = col;
                    }
                    if (rows) {
                        rows(p->sparse, c, 0, acc + d * stride);
                    } else {
                        ds_dots16(c, w, nblk, cg, acc + d * stride);
                    }
                }
                for (i = 0; i < cg; i++) {
                    int32_t m = acc[i];
                    int8_t v;
                    for (d = 1; d < npos; d++) {
                        m = acc[d * stride + i] > m ? acc[d * stride + i] : m;
                    }
                    v = ds_requant(m + bias[i], mult[i], zp);
                    if (add) {
                        v = p->add_first ? ds_add_one(add, fixed, v, out[i]) : ds_add_one(add, fixed, out[i], v);
                    }
                    out[i] = v;
                }
            }
        }
    }
}

/* @kernel bias needs=sparse */
#if DS_DSP
static uint32_t ds_word(const uint8_t *b)
{
    uint32_t w;
    __asm__("ldr %0, [%1]" : "=r"(w) : "r"(b) : "memory");
    return w;
}
#define DS_WORD24(b) ds_word(b)
#else
#define DS_WORD24(b) ((uint32_t)(b)[0] | ((uint32_t)(b)[1] << 8) | ((uint32_t)(b)[2] << 16))
#endif
/* A 3-byte little-endian integer, sign-extended (an unaligned word load on the DSP core). */
static int32_t ds_int24(const uint8_t *b)
{
    return (int32_t)((DS_WORD24(b) & 0xFFFFFFu) ^ 0x800000u) - 0x800000;
}

/* @kernel sparse12 needs=bias */
/* The 24 bits of a pair of 12-bit entries (above them, on the DSP core, the next byte: fields never reach
 * it). An unaligned word load there, three byte loads elsewhere. */
#define DS_WORD(b) DS_WORD24(b)

/* One entry of 12 bits at bit `at` of w: skip its gap, multiply-accumulate its codebook value. */
#define DS_ENTRY12(G, AT)                                                                                   \
    do {                                                                                                    \
        x += (w >> (AT)) & ((1u << (G)) - 1u);                                                              \
        acc += (int32_t)*x++ * cb[(w >> ((AT) + (G))) & ((1u << (12 - (G))) - 1u)];                          \
    } while (0)
#if DS_DSP
/* Four entries (two unaligned word loads) per iteration: 28 instructions per four non-zeros. */
#define DS_HALF12(G, AT, XT)                                                                                \
    "ubfx %[f], %[w], #" DS_STR(AT) ", #" DS_STR(G) "\n\t"                                                  \
    "add %[x], %[x], %[f]" DS_SH_##XT "\n\t"                                                                \
    DS_LD_##XT " %[v], [%[x]], #" DS_SZ_##XT "\n\t"                                                         \
    "ubfx %[f], %[w], #(" DS_STR(AT) " + " DS_STR(G) "), #(12 - " DS_STR(G) ")\n\t"                          \
    "ldrsb %[f], [%[cb], %[f]]\n\t"                                                                         \
    "mla %[acc], %[v], %[f], %[acc]\n\t"
#define DS_QUADS12(G, XT)                                                                                   \
    if (quads > 0) {                                                                                        \
        uint32_t f;                                                                                         \
        int32_t v;                                                                                          \
        __asm__ volatile("1:\n\t"                                                                           \
                         "ldr %[w], [%[b]], #3\n\t" DS_HALF12(G, 0, XT) DS_HALF12(G, 12, XT)                \
                         "ldr %[w], [%[b]], #3\n\t" DS_HALF12(G, 0, XT) DS_HALF12(G, 12, XT)                \
                         "subs %[n], %[n], #1\n\t"                                                          \
                         "bne 1b\n\t"                                                                       \
                         : [acc] "+r"(acc), [b] "+r"(b), [x] "+r"(x), [n] "+r"(quads), [w] "=&r"(w),          \
                           [f] "=&r"(f), [v] "=&r"(v)                                                       \
                         : [cb] "r"(cb)                                                                     \
                         : "cc", "memory");                                                                 \
    }
#else
#define DS_QUADS12(G, XT)                                                                                   \
    for (; quads > 0; quads--, b += 6) {                                                                    \
        w = DS_WORD(b);                                                                                     \
        DS_ENTRY12(G, 0);                                                                                   \
        DS_ENTRY12(G, 12);                                                                                  \
        w = DS_WORD(b + 3);                                                                                 \
        DS_ENTRY12(G, 0);                                                                                   \
        DS_ENTRY12(G, 12);                                                                                  \
    }
#endif
/* The rows of a layer of 12-bit entries with G gap bits and CT row counts, against XT activations. Per row:
 * the compensation of its fillers, a first entry alone when the row starts on the second half of a pair,
 * four entries at a time, then the last one to three; a row ending on the first half of a pair leaves the
 * second to the next row. */
#define DS_SPARSE12(G, CT, XT)                                                                              \
    static void ds_sparse12_##G##_##CT##_##XT(const void *layer, const XT *x0, int8_t *y, int32_t *out)       \
    {                                                                                                       \
        const ds_sparse_t *p = (const ds_sparse_t *)layer;                                                  \
        const CT *count = (const CT *)p->count;                                                             \
        const int16_t *comp = p->comp;                                                                      \
        const int8_t *const cb = p->cb;                                                                     \
        const float *mult = p->q.mult;                                                                      \
        const int32_t step = p->per_channel, zp = p->q.zp;                                                  \
        const uint8_t *b = p->e;                                                                            \
        DS_BIAS_LOCALS                                                                                      \
        int32_t r, half = 0;                                                                                \
        for (r = 0; r < p->n_out; r++, mult += step) {                                                      \
            int32_t n = count[r], acc = y ? DS_BIAS(r) : 0, quads;                                             \
            const XT *x = x0;                                                                               \
            uint32_t w;                                                                                     \
            for (; comp && comp[0] == r; comp += 3) {                                                       \
                acc -= (int32_t)x0[comp[1]] * cb[comp[2]];                                                  \
            }                                                                                               \
            if (half && n > 0) {                                                                            \
                w = DS_WORD(b);                                                                             \
                b += 3;                                                                                     \
                DS_ENTRY12(G, 12);                                                                          \
                n--;                                                                                        \
                half = 0;                                                                                   \
            }                                                                                               \
            quads = n >> 2;                                                                                 \
            DS_QUADS12(G, XT)                                                                               \
            if (n & 2) {                                                                                    \
                w = DS_WORD(b);                                                                             \
                b += 3;                                                                                     \
                DS_ENTRY12(G, 0);                                                                           \
                DS_ENTRY12(G, 12);                                                                          \
            }                                                                                               \
            if (n & 1) {                                                                                    \
                w = DS_WORD(b);                                                                             \
                DS_ENTRY12(G, 0);                                                                           \
                half = 1;                                                                                   \
            }                                                                                               \
            DS_ROW_OUT()                                                                                    \
        }                                                                                                   \
    }

/* @kernel sparse12c needs=sparse12 */
/* Four convolution columns at once (a pooling window's positions, S bytes apart): each entry is decoded once
 * for four multiply-accumulates, 12 instructions per entry on the DSP core instead of 4 x 7. out holds four
 * blocks of accumulators, `os` apart. */
#define DS_ENTRY12C(G, AT, S)                                                                               \
    do {                                                                                                    \
        int32_t c_, d_;                                                                                     \
        x += (w >> (AT)) & ((1u << (G)) - 1u);                                                              \
        c_ = cb[(w >> ((AT) + (G))) & ((1u << (12 - (G))) - 1u)];                                           \
        for (d_ = 0; d_ < 4; d_++) {                                                                        \
            a[d_] += (int32_t)x[d_ * ((S) / 2)] * c_;                                                       \
        }                                                                                                   \
        x++;                                                                                                \
    } while (0)
#if DS_DSP
#define DS_HALF12C(G, AT, S)                                                                                \
    "ubfx %[f], %[w], #" DS_STR(AT) ", #" DS_STR(G) "\n\t"                                                  \
    "add %[x], %[x], %[f], lsl #1\n\t"                                                                      \
    "ubfx %[f], %[w], #(" DS_STR(AT) " + " DS_STR(G) "), #(12 - " DS_STR(G) ")\n\t"                          \
    "ldrsb %[c], [%[cb], %[f]]\n\t"                                                                         \
    "ldrsh %[v], [%[x], #" DS_STR(S) "]\n\t"                                                                \
    "mla %[a1], %[v], %[c], %[a1]\n\t"                                                                      \
    "ldrsh %[v], [%[x], #(2 * " DS_STR(S) ")]\n\t"                                                          \
    "mla %[a2], %[v], %[c], %[a2]\n\t"                                                                      \
    "ldrsh %[v], [%[x], #(3 * " DS_STR(S) ")]\n\t"                                                          \
    "mla %[a3], %[v], %[c], %[a3]\n\t"                                                                      \
    "ldrsh %[v], [%[x]], #2\n\t"                                                                            \
    "mla %[a0], %[v], %[c], %[a0]\n\t"
#define DS_QUADS12C(G, S)                                                                                   \
    if (quads > 0) {                                                                                        \
        uint32_t f;                                                                                         \
        int32_t v, c, a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];                                           \
        __asm__ volatile("1:\n\t"                                                                           \
                         "ldr %[w], [%[b]], #3\n\t" DS_HALF12C(G, 0, S) DS_HALF12C(G, 12, S)                \
                         "ldr %[w], [%[b]], #3\n\t" DS_HALF12C(G, 0, S) DS_HALF12C(G, 12, S)                \
                         "subs %[n], %[n], #1\n\t"                                                          \
                         "bne 1b\n\t"                                                                       \
                         : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [b] "+r"(b),           \
                           [x] "+r"(x), [n] "+r"(quads), [w] "=&r"(w), [f] "=&r"(f), [v] "=&r"(v),            \
                           [c] "=&r"(c)                                                                     \
                         : [cb] "r"(cb)                                                                     \
                         : "cc", "memory");                                                                 \
        a[0] = a0;                                                                                          \
        a[1] = a1;                                                                                          \
        a[2] = a2;                                                                                          \
        a[3] = a3;                                                                                          \
    }
#else
#define DS_QUADS12C(G, S)                                                                                   \
    for (; quads > 0; quads--, b += 6) {                                                                    \
        w = DS_WORD(b);                                                                                     \
        DS_ENTRY12C(G, 0, S);                                                                               \
        DS_ENTRY12C(G, 12, S);                                                                              \
        w = DS_WORD(b + 3);                                                                                 \
        DS_ENTRY12C(G, 0, S);                                                                               \
        DS_ENTRY12C(G, 12, S);                                                                              \
    }
#endif
#define DS_SPARSE12C(G, CT, S)                                                                              \
    static void ds_sparse12c_##G##_##CT##_##S(const void *layer, const int16_t *x0, int32_t os, int32_t *out) \
    {                                                                                                       \
        const ds_sparse_t *p = (const ds_sparse_t *)layer;                                                  \
        const CT *count = (const CT *)p->count;                                                             \
        const int16_t *comp = p->comp;                                                                      \
        const int8_t *const cb = p->cb;                                                                     \
        const uint8_t *b = p->e;                                                                            \
        int32_t r, d, half = 0;                                                                             \
        for (r = 0; r < p->n_out; r++) {                                                                    \
            int32_t n = count[r], quads, a[4];                                                              \
            const int16_t *x = x0;                                                                          \
            uint32_t w;                                                                                     \
            a[0] = a[1] = a[2] = a[3] = 0;                                                                  \
            for (; comp && comp[0] == r; comp += 3) {                                                       \
                for (d = 0; d < 4; d++) {                                                                   \
                    a[d] -= (int32_t)x0[d * ((S) / 2) + comp[1]] * cb[comp[2]];                             \
                }                                                                                           \
            }                                                                                               \
            if (half && n > 0) {                                                                            \
                w = DS_WORD(b);                                                                             \
                b += 3;                                                                                     \
                DS_ENTRY12C(G, 12, S);                                                                      \
                n--;                                                                                        \
                half = 0;                                                                                   \
            }                                                                                               \
            quads = n >> 2;                                                                                 \
            DS_QUADS12C(G, S)                                                                               \
            if (n & 2) {                                                                                    \
                w = DS_WORD(b);                                                                             \
                b += 3;                                                                                     \
                DS_ENTRY12C(G, 0, S);                                                                       \
                DS_ENTRY12C(G, 12, S);                                                                      \
            }                                                                                               \
            if (n & 1) {                                                                                    \
                w = DS_WORD(b);                                                                             \
                DS_ENTRY12C(G, 0, S);                                                                       \
                half = 1;                                                                                   \
            }                                                                                               \
            for (d = 0; d < 4; d++) {                                                                       \
                out[d * os + r] = a[d];                                                                     \
            }                                                                                               \
        }                                                                                                   \
    }

/* @kernel sparse10 needs=bias */
/* 10-bit entries, three per aligned 32-bit word (bits 0, 10, 20): a gap of G bits and a code of 10 - G. A row
 * may start and end anywhere in a word; whole words go two per iteration (19 instructions per three
 * non-zeros on the DSP core). */
#define DS_ENTRY10(G, AT)                                                                                   \
    do {                                                                                                    \
        x += (w >> (AT)) & ((1u << (G)) - 1u);                                                              \
        acc += (int32_t)*x++ * cb[(w >> ((AT) + (G))) & ((1u << (10 - (G))) - 1u)];                          \
    } while (0)
#if DS_DSP
#define DS_THIRD10(G, AT, XT)                                                                               \
    "ubfx %[f], %[w], #" DS_STR(AT) ", #" DS_STR(G) "\n\t"                                                  \
    "add %[x], %[x], %[f]" DS_SH_##XT "\n\t"                                                                \
    DS_LD_##XT " %[v], [%[x]], #" DS_SZ_##XT "\n\t"                                                         \
    "ubfx %[f], %[w], #(" DS_STR(AT) " + " DS_STR(G) "), #(10 - " DS_STR(G) ")\n\t"                          \
    "ldrsb %[f], [%[cb], %[f]]\n\t"                                                                         \
    "mla %[acc], %[v], %[f], %[acc]\n\t"
#define DS_WORDS10(G, XT)                                                                                   \
    if (words > 0) {                                                                                        \
        uint32_t f;                                                                                         \
        int32_t v;                                                                                          \
        __asm__ volatile("1:\n\t"                                                                           \
                         "ldr %[w], [%[b]], #4\n\t" DS_THIRD10(G, 0, XT) DS_THIRD10(G, 10, XT)              \
                         DS_THIRD10(G, 20, XT)                                                              \
                         "subs %[n], %[n], #1\n\t"                                                          \
                         "bne 1b\n\t"                                                                       \
                         : [acc] "+r"(acc), [b] "+r"(b), [x] "+r"(x), [n] "+r"(words), [w] "=&r"(w),          \
                           [f] "=&r"(f), [v] "=&r"(v)                                                       \
                         : [cb] "r"(cb)                                                                     \
                         : "cc", "memory");                                                                 \
    }
#else
#define DS_WORDS10(G, XT)                                                                                   \
    for (; words > 0; words--) {                                                                            \
        w = *b++;                                                                                           \
        DS_ENTRY10(G, 0);                                                                                   \
        DS_ENTRY10(G, 10);                                                                                  \
        DS_ENTRY10(G, 20);                                                                                  \
    }
#endif
#define DS_SPARSE10(G, CT, XT)                                                                              \
    static void ds_sparse10_##G##_##CT##_##XT(const void *layer, const XT *x0, int8_t *y, int32_t *out)       \
    {                                                                                                       \
        const ds_sparse_t *p = (const ds_sparse_t *)layer;                                                  \
        const CT *count = (const CT *)p->count;                                                             \
        const int16_t *comp = p->comp;                                                                      \
        const int8_t *const cb = p->cb;                                                                     \
        const float *mult = p->q.mult;                                                                      \
        const int32_t step = p->per_channel, zp = p->q.zp;                                                  \
        const uint32_t *b = (const uint32_t *)(const void *)p->e;                                           \
        DS_BIAS_LOCALS                                                                                      \
        uint32_t w = 0;                                                                                     \
        int32_t r, phase = 0; /* entries of w already read: 0 (none loaded), 1 or 2 */                      \
        for (r = 0; r < p->n_out; r++, mult += step) {                                                      \
            int32_t n = count[r], acc = y ? DS_BIAS(r) : 0, words;                                             \
            const XT *x = x0;                                                                               \
            for (; comp && comp[0] == r; comp += 3) {                                                       \
                acc -= (int32_t)x0[comp[1]] * cb[comp[2]];                                                  \
            }                                                                                               \
            for (; phase && n > 0; n--, phase = phase == 2 ? 0 : phase + 1) {                               \
                DS_ENTRY10(G, 10 * phase);                                                                  \
            }                                                                                               \
            words = n / 3;                                                                                  \
            DS_WORDS10(G, XT)                                                                               \
            for (n -= 3 * (n / 3); n > 0; n--, phase++) {                                                   \
                if (phase == 0) {                                                                           \
                    w = *b++;                                                                               \
                }                                                                                           \
                DS_ENTRY10(G, 10 * phase);                                                                  \
            }                                                                                               \
            DS_ROW_OUT()                                                                                    \
        }                                                                                                   \
    }

/* @kernel sparse10c needs=sparse10 */
/* Four convolution columns at once with 10-bit entries (see sparse12c): 3 x 12 + 3 instructions per word of
 * three entries on the DSP core. */
#define DS_ENTRY10C(G, AT, S)                                                                               \
    do {                                                                                                    \
        int32_t c_, d_;                                                                                     \
        x += (w >> (AT)) & ((1u << (G)) - 1u);                                                              \
        c_ = cb[(w >> ((AT) + (G))) & ((1u << (10 - (G))) - 1u)];                                           \
        for (d_ = 0; d_ < 4; d_++) {                                                                        \
            a[d_] += (int32_t)x[d_ * ((S) / 2)] * c_;                                                       \
        }                                                                                                   \
        x++;                                                                                                \
    } while (0)
#if DS_DSP
#define DS_THIRD10C(G, AT, S)                                                                               \
    "ubfx %[f], %[w], #" DS_STR(AT) ", #" DS_STR(G) "\n\t"                                                  \
    "add %[x], %[x], %[f], lsl #1\n\t"                                                                      \
    "ubfx %[f], %[w], #(" DS_STR(AT) " + " DS_STR(G) "), #(10 - " DS_STR(G) ")\n\t"                          \
    "ldrsb %[c], [%[cb], %[f]]\n\t"                                                                         \
    "ldrsh %[v], [%[x], #" DS_STR(S) "]\n\t"                                                                \
    "mla %[a1], %[v], %[c], %[a1]\n\t"                                                                      \
    "ldrsh %[v], [%[x], #(2 * " DS_STR(S) ")]\n\t"                                                          \
    "mla %[a2], %[v], %[c], %[a2]\n\t"                                                                      \
    "ldrsh %[v], [%[x], #(3 * " DS_STR(S) ")]\n\t"                                                          \
    "mla %[a3], %[v], %[c], %[a3]\n\t"                                                                      \
    "ldrsh %[v], [%[x]], #2\n\t"                                                                            \
    "mla %[a0], %[v], %[c], %[a0]\n\t"
#define DS_WORDS10C(G, S)                                                                                   \
    if (words > 0) {                                                                                        \
        uint32_t f;                                                                                         \
        int32_t v, c, a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];                                           \
        __asm__ volatile("1:\n\t"                                                                           \
                         "ldr %[w], [%[b]], #4\n\t" DS_THIRD10C(G, 0, S) DS_THIRD10C(G, 10, S)              \
                         DS_THIRD10C(G, 20, S)                                                              \
                         "subs %[n], %[n], #1\n\t"                                                          \
                         "bne 1b\n\t"                                                                       \
                         : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [b] "+r"(b),           \
                           [x] "+r"(x), [n] "+r"(words), [w] "=&r"(w), [f] "=&r"(f), [v] "=&r"(v),            \
                           [c] "=&r"(c)                                                                     \
                         : [cb] "r"(cb)                                                                     \
                         : "cc", "memory");                                                                 \
        a[0] = a0;                                                                                          \
        a[1] = a1;                                                                                          \
        a[2] = a2;                                                                                          \
        a[3] = a3;                                                                                          \
    }
#else
#define DS_WORDS10C(G, S)                                                                                   \
    for (; words > 0; words--) {                                                                            \
        w = *b++;                                                                                           \
        DS_ENTRY10C(G, 0, S);                                                                               \
        DS_ENTRY10C(G, 10, S);                                                                              \
        DS_ENTRY10C(G, 20, S);                                                                              \
    }
#endif
#define DS_SPARSE10C(G, CT, S)                                                                              \
    static void ds_sparse10c_##G##_##CT##_##S(const void *layer, const int16_t *x0, int32_t os, int32_t *out) \
    {                                                                                                       \
        const ds_sparse_t *p = (const ds_sparse_t *)layer;                                                  \
        const CT *count = (const CT *)p->count;                                                             \
        const int16_t *comp = p->comp;                                                                      \
        const int8_t *const cb = p->cb;                                                                     \
        const uint32_t *b = (const uint32_t *)(const void *)p->e;                                           \
        uint32_t w = 0;                                                                                     \
        int32_t r, d, phase = 0;                                                                            \
        for (r = 0; r < p->n_out; r++) {                                                                    \
            int32_t n = count[r], words, a[4];                                                              \
            const int16_t *x = x0;                                                                          \
            a[0] = a[1] = a[2] = a[3] = 0;                                                                  \
            for (; comp && comp[0] == r; comp += 3) {                                                       \
                for (d = 0; d < 4; d++) {                                                                   \
                    a[d] -= (int32_t)x0[d * ((S) / 2) + comp[1]] * cb[comp[2]];                             \
                }                                                                                           \
            }                                                                                               \
            for (; phase && n > 0; n--, phase = phase == 2 ? 0 : phase + 1) {                               \
                DS_ENTRY10C(G, 10 * phase, S);                                                              \
            }                                                                                               \
            words = n / 3;                                                                                  \
            DS_WORDS10C(G, S)                                                                               \
            for (n -= 3 * (n / 3); n > 0; n--, phase++) {                                                   \
                if (phase == 0) {                                                                           \
                    w = *b++;                                                                               \
                }                                                                                           \
                DS_ENTRY10C(G, 10 * phase, S);                                                              \
            }                                                                                               \
            for (d = 0; d < 4; d++) {                                                                       \
                out[d * os + r] = a[d];                                                                     \
            }                                                                                               \
        }                                                                                                   \
    }

/* @kernel sparse16 needs=bias */
/* The rows of a layer of 16-bit entries (int8 weights) and CT row counts against XT activations: 7
 * instructions per non-zero on the DSP core. */
#if DS_DSP
#define DS_ENTRIES16(XT)                                                                                    \
    if (n > 0) {                                                                                            \
        uint32_t g;                                                                                         \
        int32_t v, c;                                                                                       \
        __asm__ volatile("1:\n\t"                                                                           \
                         "ldrb %[g], [%[e]], #1\n\t"                                                        \
                         "add %[x], %[x], %[g]" DS_SH_##XT "\n\t"                                           \
                         DS_LD_##XT " %[v], [%[x]], #" DS_SZ_##XT "\n\t"                                    \
                         "ldrsb %[c], [%[e]], #1\n\t"                                                       \
                         "mla %[acc], %[v], %[c], %[acc]\n\t"                                               \
                         "subs %[n], %[n], #1\n\t"                                                          \
                         "bne 1b\n\t"                                                                       \
                         : [acc] "+r"(acc), [e] "+r"(e), [x] "+r"(x), [n] "+r"(n), [g] "=&r"(g),              \
                           [v] "=&r"(v), [c] "=&r"(c)                                                       \
                         :                                                                                  \
                         : "cc", "memory");                                                                 \
    }
#else
#define DS_ENTRIES16(XT)                                                                                    \
    for (; n > 0; n--, e += 2) {                                                                            \
        x += e[0];                                                                                          \
        acc += (int32_t)*x++ * (int8_t)e[1];                                                                \
    }
#endif
#define DS_SPARSE16(CT, XT)                                                                                 \
    static void ds_sparse16_##CT##_##XT(const void *layer, const XT *x0, int8_t *y, int32_t *out)             \
    {                                                                                                       \
        const ds_sparse_t *p = (const ds_sparse_t *)layer;                                                  \
        const CT *count = (const CT *)p->count;                                                             \
        const uint8_t *e = p->e;                                                                            \
        const float *mult = p->q.mult;                                                                      \
        const int32_t zp = p->q.zp;                                                                         \
        DS_BIAS_LOCALS                                                                                      \
        int32_t r;                                                                                          \
        for (r = 0; r < p->n_out; r++, mult += p->per_channel) {                                            \
            int32_t n = count[r], acc = y ? DS_BIAS(r) : 0;                                                    \
            const XT *x = x0;                                                                               \
            DS_ENTRIES16(XT)                                                                                \
            DS_ROW_OUT()                                                                                    \
        }                                                                                                   \
    }

/* @kernel packed needs=sparse */
/* Weights j = 4s + i of a row's 32-bit word: byte i (int16 activations: byte 0, 2, 1, 3 for i = 0..3), bits
 * BITS*s and up, stored as w + 2^(BITS-1) (unsigned: a mask reads it; half x sum(x) is taken back once). */
#define DS_PBYTE_int8_t(i) (i)
#define DS_PBYTE_int16_t(i) ((i) == 1 ? 2 : (i) == 2 ? 1 : (i))

#if DS_DSP
static inline __attribute__((always_inline)) uint32_t ds_ld32(const void *p)
{
    uint32_t v;
    __asm__("ldr %0, [%1]" : "=r"(v) : "r"(p), "m"(*(const uint8_t(*)[4])p));
    return v;
}
static inline __attribute__((always_inline)) uint32_t ds_sxtb16(uint32_t v)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1" : "=r"(r) : "r"(v));
    return r;
}
static inline __attribute__((always_inline)) uint32_t ds_sxtb16_r8(uint32_t v)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
static inline __attribute__((always_inline)) int32_t ds_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    int32_t r;
    __asm__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}
/* Activations 4s..4s+3 as the two halfword pairs SMLAD meets the weights' SXTB16 lanes with. */
#define DS_PX_int8_t(x, lo, hi)                                                                             \
    do {                                                                                                    \
        const uint32_t v_ = ds_ld32(x);                                                                     \
        lo = ds_sxtb16(v_);                                                                                 \
        hi = ds_sxtb16_r8(v_);                                                                              \
    } while (0)
#define DS_PX_int16_t(x, lo, hi)                                                                            \
    do {                                                                                                    \
        lo = ds_ld32(x);                                                                                    \
        hi = ds_ld32((x) + 2);                                                                              \
    } while (0)
#define DS_PSTEP(BITS, XT, s)                                                                               \
    do {                                                                                                    \
        const uint32_t part_ = (wv >> ((BITS) * (s))) & mask;                                               \
        uint32_t lo_, hi_;                                                                                  \
        DS_PX_##XT(xp + 4 * (s), lo_, hi_);                                                                 \
        acc = ds_smlad(ds_sxtb16(part_), lo_, acc);                                                         \
        acc = ds_smlad(ds_sxtb16_r8(part_), hi_, acc);                                                      \
    } while (0)
/* The whole words of a row: one mask and two SMLADs per four weights; pointers walk, no index arithmetic. */
#define DS_PWORDS(BITS, XT)                                                                                 \
    {                                                                                                       \
        const uint8_t *wp = w, *const wend = w + full * (BITS) / 8;                                         \
        const XT *xp = x;                                                                                   \
        for (; wp < wend; wp += 4, xp += 32 / (BITS)) {                                                     \
            const uint32_t wv = ds_ld32(wp);                                                                \
            DS_PSTEP(BITS, XT, 0);                                                                          \
            DS_PSTEP(BITS, XT, 1);                                                                          \
            if ((BITS) == 2) {                                                                              \
                DS_PSTEP(BITS, XT, 2);                                                                      \
                DS_PSTEP(BITS, XT, 3);                                                                      \
            }                                                                                               \
        }                                                                                                   \
        j = full;                                                                                           \
    }
#else
#define DS_PWORDS(BITS, XT)
#endif

#define DS_PACKED(BITS, XT)                                                                                 \
    static void ds_packed##BITS##_##XT(const void *layer, const XT *x, int8_t *y, int32_t *out)              \
    {                                                                                                       \
        const ds_packed_t *p = (const ds_packed_t *)layer;                                                  \
        const int32_t k = p->k, per = 32 / (BITS), row = (k + per - 1) / per * 4, full = k / per * per;     \
        const uint32_t mask = 0x01010101u * ((1u << (BITS)) - 1u);                                          \
        const uint8_t *w = p->w;                                                                            \
        const float *mult = p->q.mult;                                                                      \
        const int32_t zp = p->q.zp;                                                                         \
        int32_t r, j, half = 0;                                                                             \
        (void)mask;                                                                                         \
        (void)full;                                                                                         \
        for (j = 0; j < k; j++) {                                                                           \
            half += x[j];                                                                                   \
        }                                                                                                   \
        half *= 1 << ((BITS) - 1);                                                                          \
        for (r = 0; r < p->n_out; r++, mult += p->per_channel, w += row) {                                  \
            int32_t acc = (y ? p->q.bias[r] : 0) - half;                                                    \
            j = 0;                                                                                          \
            DS_PWORDS(BITS, XT)                                                                             \
            for (; j < k; j++) {                                                                            \
                const int32_t q = j % per; /* the scalar tail, and every weight off the DSP */              \
                const uint8_t b = w[(j - q) * (BITS) / 8 + DS_PBYTE_##XT(q % 4)];                           \
                acc += (int32_t)x[j] * (int32_t)((b >> ((BITS) * (q / 4))) & ((1u << (BITS)) - 1u));          \
            }                                                                                               \
            DS_ROW_OUT()                                                                                    \
        }                                                                                                   \
    }

/* @kernel gather needs=base */
/* The inputs a sparse layer reads, side by side: runs of (inputs skipped, inputs copied), a byte each. */
typedef struct {
    const uint8_t *runs;
    int16_t n;
} ds_gather_t;

static void ds_gather(const ds_gather_t *p, const int8_t *x, int8_t *y)
{
    const uint8_t *r = p->runs;
    int i, j;
    for (i = 0; i < p->n; i++, r += 2) {
        x += r[0];
        j = r[1];
#if DS_DSP /* four at a time: the M4's LDR and STR take any address */
        for (; j >= 4; j -= 4, x += 4, y += 4) {
            uint32_t v;
            __asm__("ldr %0, [%1]" : "=r"(v) : "r"(x), "m"(*(const int8_t(*)[4])x));
            __asm__("str %1, [%2]" : "=m"(*(int8_t(*)[4])y) : "r"(v), "r"(y));
        }
#endif
        for (; j > 0; j--) {
            *y++ = *x++;
        }
    }
}

/* @kernel maxpool needs=base */
typedef struct {
    int16_t in_h, in_w, c, out_h, out_w, kh, kw, sh, sw, pt, pl;
} ds_pool_t;

/* Max pooling on H x W x C; padded positions are skipped (ONNX MaxPool pads with -inf). */
static void ds_maxpool(const ds_pool_t *p, const int8_t *x, int8_t *y)
{
    int oy, ox, ky, kx, c;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            for (c = 0; c < p->c; c++) {
                int8_t m = -128;
                for (ky = 0; ky < p->kh; ky++) {
                    const int iy = oy * p->sh - p->pt + ky;
                    for (kx = 0; kx < p->kw; kx++) {
                        const int ix = ox * p->sw - p->pl + kx;
                        if (iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w) {
                            const int8_t v = x[(iy * p->in_w + ix) * p->c + c];
                            m = v > m ? v : m;
                        }
                    }
                }
                *y++ = m;
            }
        }
    }
}

/* @kernel gavgpool needs=base */
/* Global average pooling of H x W x C to C, as ONNX Runtime's QLinearGlobalAveragePool: an int32 sum minus
 * n times the input zero point, requantized with x_scale / (y_scale * n). acc: C int32. */
typedef struct {
    float mult;
    int32_t n, c;
    int8_t in_zp, zp;
} ds_gavg_t;

static void ds_gavgpool(const ds_gavg_t *p, const int8_t *x, int8_t *y, int32_t *acc)
{
    const int32_t c = p->c, n = p->n;
    int32_t i, k;
    for (k = 0; k < c; k++) {
        acc[k] = -p->in_zp * n;
    }
    for (i = 0; i < n; i++, x += c) {
        for (k = 0; k < c; k++) {
            acc[k] += x[k];
        }
    }
    for (k = 0; k < c; k++) {
        y[k] = ds_requant(acc[k], p->mult, p->zp);
    }
}

/* @kernel avgpool needs=fma */
/* Average pooling (not global), as ONNX Runtime's QLinearAveragePool computes it: in float, each value
 * dequantized, summed in row order, divided by the count, divided by y_scale, the zero point added, then
 * rounded. */
typedef struct {
    int16_t in_h, in_w, c, out_h, out_w, kh, kw, sh, sw, pt, pl;
    int16_t count_pad, in_zp, zp, off; /* zero points in ONNX Runtime's domain */
    float x_scale, y_scale;
} ds_avgpool_t;

static void ds_avgpool(const ds_avgpool_t *p, const int8_t *x, int8_t *y)
{
    const int32_t lo = -128 + p->off, hi = 127 + p->off;
    int oy, ox, ky, kx, c;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            for (c = 0; c < p->c; c++) {
                float acc = 0.0f, t;
                int count = 0;
                for (ky = 0; ky < p->kh; ky++) {
                    const int iy = oy * p->sh - p->pt + ky;
                    for (kx = 0; kx < p->kw; kx++) {
                        const int ix = ox * p->sw - p->pl + kx;
                        if (iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w) {
                            const float d = p->x_scale * (float)(x[(iy * p->in_w + ix) * p->c + c] + p->off - p->in_zp);
                            acc += d;
                            count++;
                        }
                    }
                }
                acc /= (float)(p->count_pad ? p->kh * p->kw : count);
                t = acc / p->y_scale;
                t = t + (float)p->zp;
                *y++ = (int8_t)(ds_round_clamp(t, lo, hi) - p->off);
            }
        }
    }
}

/* @kernel argmax */
static int ds_argmax(const int8_t *v, int n)
{
    int i, best = 0;
    for (i = 1; i < n; i++) {
        if (v[i] > v[best]) {
            best = i;
        }
    }
    return best;
}
