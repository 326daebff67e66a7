// Reads once from stdin, at most 100 bytes, says how many it got and exits: a reader
// that leaves its writer behind.
#include <stdio.h>
#include <unistd.h>

int main(void) {
    char block[100];
    ssize_t got = read(0, block, sizeof block);
    printf("read %zd\n", got);
    return 0;
}
