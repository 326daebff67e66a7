// Reads stdin once and prints what the read returned, with errno on failure.
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    char buffer[16];
    ssize_t n = read(0, buffer, sizeof buffer);
    printf("read %zd errno %d\n", n, n < 0 ? errno : 0);
    return 0;
}
