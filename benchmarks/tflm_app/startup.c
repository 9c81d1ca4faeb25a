/* Start-up for the TensorFlow Lite Micro app of bench_mcu.py (C++): vector table, .data copied from flash, .bss
 * zeroed, the FPU enabled where the image uses one, C++ static constructors (__libc_init_array), main(). No
 * semihosting. The same reset sequence as deepshrink's own src/deepshrink/mcu/c/startup.c, plus the
 * constructors. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void __libc_init_array(void);
void _init(void);
void _fini(void);

void Default_Handler(void)
{
    for (;;) {
    }
}

/* __libc_init_array calls these (crti.o's, left out with -nostartfiles): nothing to do. */
void _init(void) {}
void _fini(void) {}

__attribute__((section(".isr_vector"), used)) void (*const tflm_vectors[16])(void) = {
    (void (*)(void))(uintptr_t)&_estack, Reset_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0, Default_Handler,
    Default_Handler,
};

void Reset_Handler(void)
{
    uint32_t *src = &_sidata;
    uint32_t *dst = &_sdata;
    while (dst < &_edata) {
        *dst++ = *src++;
    }
    for (dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0;
    }
#if defined(__ARM_FP)
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CP10, CP11 full access */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    __libc_init_array();
    main();
    for (;;) {
    }
}
