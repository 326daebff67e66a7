// Prints, then aborts (a wasm `unreachable` trap).
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    printf("about to abort\n");
    abort();
}
