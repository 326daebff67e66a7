// Writes the numbers from 0 up to argv[1], one line each, one unbuffered write per line.
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    long last = argc > 1 ? atol(argv[1]) : 0;
    for (long i = 0; i <= last; i++) {
        printf("%ld\n", i);
    }
    return 0;
}
