// Allocates 1 MiB blocks until malloc fails, touching each; prints the MiB it got.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    // The blocks are chained, so the compiler cannot drop the allocations.
    void **chain = NULL;
    long mib = 0;
    for (;;) {
        void **block = malloc(1 << 20);
        if (block == NULL) {
            break;
        }
        memset(block, 1, 1 << 20);
        *block = chain;
        chain = block;
        mib++;
    }
    printf("%ld MiB\n", mib);
    return chain == NULL;
}
