// Writes a line, flushes it, then computes forever without another WASI call.
#include <stdio.h>

int main(void) {
    printf("computing\n");
    fflush(stdout);
    for (volatile unsigned long i = 0;; i++) {
    }
}
