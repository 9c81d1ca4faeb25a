/* The host build's harness (loaded through ctypes): whole batches per call, so measuring the test set
 * costs one call, not one per image. Not part of what ships. */
#include <stdint.h>

#include "model.h"

void ds_host_pixels(const uint8_t *pixels, int32_t n, int8_t *logits, int32_t *classes)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        classes[i] = ds_infer_pixels(pixels + (long)i * DS_INPUT_SIZE, logits + (long)i * DS_NUM_CLASSES);
    }
}

void ds_host_quantized(const int8_t *input, int32_t n, int8_t *logits, int32_t *classes)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        classes[i] = ds_infer(input + (long)i * DS_INPUT_SIZE, logits + (long)i * DS_NUM_CLASSES);
    }
}

/* From normalized float images, quantized as ONNX Runtime's QuantizeLinear does (x / scale, clamped,
 * rounded half to even, plus the zero point): the same input an ONNX Runtime session takes, so the two
 * are timed on the same work. */
void ds_host_float(const float *x, int32_t n, int8_t *logits)
{
    static int8_t q[DS_INPUT_SIZE];
    const float lo = (float)(-128 - DS_INPUT_ZERO_POINT), hi = (float)(127 - DS_INPUT_ZERO_POINT);
    int32_t i, k;
    for (i = 0; i < n; i++, x += DS_INPUT_SIZE) {
        for (k = 0; k < DS_INPUT_SIZE; k++) {
            union { float f; int32_t i; } u;
            float v = x[k] / DS_INPUT_SCALE;
            v = v > lo ? v : lo;
            v = v < hi ? v : hi;
            u.f = v + 12582912.0f;
            q[k] = (int8_t)(u.i - 0x4B400000 + DS_INPUT_ZERO_POINT);
        }
        ds_infer(q, logits + (long)i * DS_NUM_CLASSES);
    }
}
