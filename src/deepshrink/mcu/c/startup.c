/* A minimal Cortex-M start-up: vector table, .data copied from flash, .bss zeroed, FPU enabled (where the
 * image uses one), main().
 * No C library, no semihosting: what is measured is the model and this, nothing else. Built with
 * DS_CONSTRUCTORS (benchmarks/tflm_run.py's C++ TFLM app, newlib) it also runs the static constructors, so the
 * two images measured side by side start the same way. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void Default_Handler(void);

#if defined(DS_CONSTRUCTORS)
void __libc_init_array(void);
void _init(void);
void _fini(void);

/* __libc_init_array calls these (crti.o's, left out with -nostartfiles): nothing to do. */
void _init(void) {}
void _fini(void) {}
#endif

void Default_Handler(void)
{
    for (;;) {
    }
}

/* Initial stack pointer, reset, then NMI ... SysTick: the 16 entries every Cortex-M core has. */
__attribute__((section(".isr_vector"), used)) void (*const ds_vectors[16])(void) = {
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
    /* CP10 and CP11 full access (SCB->CPACR): the kernels' requantization uses the FPU. A core built without
     * one (soft float: Cortex-M0+, M3) has no CPACR to write. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
#if defined(DS_CONSTRUCTORS)
    __libc_init_array();
#endif
    main();
    for (;;) {
    }
}
