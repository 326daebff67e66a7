// Runs a compute kernel from benches/kernels (compiled apart with -Dmain=kernel_main)
// once a line arrives on stdin, then prints a hash of the program's whole linear
// memory, so that a run restored from a snapshot is compared with an uninterrupted one
// bit for bit: every double of n-body's bodies, every byte of the sorted array.
#include <stdint.h>
#include <stdio.h>

int kernel_main(void);

// Linear memory starts at address 0, which C may not dereference directly.
static volatile uintptr_t memory_base = 0;

int main(void) {
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 2;
    int status = kernel_main();
    fflush(stdout);
    const volatile unsigned char *memory = (const volatile unsigned char *)memory_base;
    size_t size = __builtin_wasm_memory_size(0) * 65536;
    uint64_t hash = 1469598103934665603ULL;
    for (size_t i = 0; i < size; i++) {
        hash ^= memory[i];
        hash *= 1099511628211ULL;
    }
    printf("memory %016llx\n", (unsigned long long)hash);
    return status;
}
