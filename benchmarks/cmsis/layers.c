/* CMSIS-NN's s8 kernels on the layers bench_layers.py measures deepshrink's on (weights and quantization are
 * placeholders: the dense kernels' cost does not depend on their values). Each entry point runs one layer
 * on ds_fw_input, as the emulator calls a model's NAME_infer. */
#include <stdint.h>

#include "arm_nnfunctions.h"

int8_t ds_fw_input[32 * 32 * 16] __attribute__((aligned(4), used));
int8_t ds_fw_logits[4] __attribute__((aligned(4), used));
static int8_t out[32 * 32 * 16] __attribute__((aligned(8)));
static int16_t scratch[8192] __attribute__((aligned(8)));
static int8_t weights[64 * 64 * 9] __attribute__((aligned(8))) = {1, -2, 3};
static int32_t bias[64];
static int32_t mult[64] = {1 << 30};
static int32_t shift[64] = {-7};
volatile int ds_fw_class;

static int conv(int h, int w, int cin, int cout, int k, int stride, int pad)
{
    cmsis_nn_context ctx = {scratch, sizeof scratch};
    cmsis_nn_conv_params cp = {3, -5, {stride, stride}, {pad, pad}, {1, 1}, {-128, 127}};
    cmsis_nn_per_channel_quant_params q = {mult, shift};
    cmsis_nn_dims in = {1, h, w, cin}, f = {cout, k, k, cin}, b = {1, 1, 1, cout};
    cmsis_nn_dims o = {1, (h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1, cout};
    return arm_convolve_wrapper_s8(&ctx, &cp, &q, &in, ds_fw_input, &f, weights, &b, bias, &o, out);
}

static int dw(int h, int w, int c, int stride, int pad)
{
    cmsis_nn_context ctx = {scratch, sizeof scratch};
    cmsis_nn_dw_conv_params cp = {3, -5, 1, {stride, stride}, {pad, pad}, {1, 1}, {-128, 127}};
    cmsis_nn_per_channel_quant_params q = {mult, shift};
    cmsis_nn_dims in = {1, h, w, c}, f = {1, 3, 3, c}, b = {1, 1, 1, c};
    cmsis_nn_dims o = {1, (h + 2 * pad - 3) / stride + 1, (w + 2 * pad - 3) / stride + 1, c};
    return arm_depthwise_conv_wrapper_s8(&ctx, &cp, &q, &in, ds_fw_input, &f, weights, &b, bias, &o, out);
}

__attribute__((used, noinline)) int dw64_infer(const int8_t *x, int8_t *y) { (void)x; y[0] = (int8_t)dw(25, 5, 64, 1, 1); return y[0]; }
__attribute__((used, noinline)) int pw64_infer(const int8_t *x, int8_t *y) { (void)x; y[0] = (int8_t)conv(25, 5, 64, 64, 1, 1, 0); return y[0]; }
__attribute__((used, noinline)) int c3x16_infer(const int8_t *x, int8_t *y) { (void)x; y[0] = (int8_t)conv(32, 32, 16, 16, 3, 1, 1); return y[0]; }
__attribute__((used, noinline)) int c3x64_infer(const int8_t *x, int8_t *y) { (void)x; y[0] = (int8_t)conv(8, 8, 64, 64, 3, 1, 1); return y[0]; }
__attribute__((used, noinline)) int dw32_infer(const int8_t *x, int8_t *y) { (void)x; y[0] = (int8_t)dw(24, 24, 32, 1, 1); return y[0]; }

int main(void)
{
    for (;;) {
        ds_fw_class = dw64_infer(ds_fw_input, ds_fw_logits) + pw64_infer(ds_fw_input, ds_fw_logits) +
                      c3x16_infer(ds_fw_input, ds_fw_logits) + c3x64_infer(ds_fw_input, ds_fw_logits) +
                      dw32_infer(ds_fw_input, ds_fw_logits);
    }
}
