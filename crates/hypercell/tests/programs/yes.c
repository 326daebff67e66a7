// Prints "y" until a write fails, like yes(1); the status says it saw the failure.
#include <stdio.h>

int main(void) {
    while (puts("y") >= 0) {
    }
    return 3;
}
