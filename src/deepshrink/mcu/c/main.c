/* The measured firmware's application: one input buffer, one logits buffer, inference in a loop. The
 * emulator writes a test image into ds_fw_input and calls ds_infer directly, once per image. */
#include <stdint.h>

#include "model.h"

int8_t ds_fw_input[DS_INPUT_SIZE] __attribute__((aligned(4)));
int8_t ds_fw_logits[DS_NUM_CLASSES] __attribute__((aligned(4)));
volatile int ds_fw_class;

int main(void)
{
    for (;;) {
        ds_fw_class = ds_infer(ds_fw_input, ds_fw_logits);
    }
}
