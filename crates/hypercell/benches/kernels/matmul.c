// Dense matrix multiply in f64: C = A * B, 512 x 512 (-DSIZE=N for smaller), three times.
#include <stdio.h>
#include <stdlib.h>

#ifndef SIZE
#define SIZE 512
#endif

int main(void) {
    double *a = malloc(sizeof(double) * SIZE * SIZE);
    double *b = malloc(sizeof(double) * SIZE * SIZE);
    double *c = malloc(sizeof(double) * SIZE * SIZE);
    for (int i = 0; i < SIZE * SIZE; i++) {
        a[i] = (double)(i % 97) / 97.0;
        b[i] = (double)(i % 89) / 89.0;
    }
    double trace = 0;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < SIZE * SIZE; i++) c[i] = 0;
        for (int i = 0; i < SIZE; i++)
            for (int k = 0; k < SIZE; k++) {
                double aik = a[i * SIZE + k] + round;
                for (int j = 0; j < SIZE; j++) c[i * SIZE + j] += aik * b[k * SIZE + j];
            }
        for (int i = 0; i < SIZE; i++) trace += c[i * SIZE + i];
    }
    printf("matmul %.6f\n", trace);
    return 0;
}
