/* Reaches migration points from code that libc calls back into, and from places a rewrite
 * can easily get wrong: a comparator that writes to unbuffered stderr inside qsort and bsearch,
 * a table of function pointers, variadic functions, mutual recursion whose frames hold
 * buffers, standard input read line by line, and atexit handlers that print while exit runs.
 * Everything it prints depends only on its input. Usage: callbacks [N], reading stdin. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long compares;

/* Every 7th comparison is reported on stderr, which wasi-libc does not buffer: an fd_write
 * deep inside qsort's own frames. */
static int by_value(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    if (++compares % 7 == 0)
        fprintf(stderr, "compare #%lu: %d vs %d\n", compares, x, y);
    return (x > y) - (x < y);
}

/* A printf-like logger that formats into a buffer first, then writes it with its own call. */
static void note(const char *fmt, ...) {
    char buf[96];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fwrite(buf, 1, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1, stdout);
    fflush(stdout);
}

typedef long (*step_fn)(long, long);
static long add(long a, long b) { note("add %ld %ld\n", a, b); return a + b; }
static long sub(long a, long b) { note("sub %ld %ld\n", a, b); return a - b; }
static long mul(long a, long b) { note("mul %ld %ld\n", a, b); return a * b; }
static const step_fn steps[] = {add, mul, sub};

/* Mutual recursion; each frame keeps a buffer whose contents are checked on the way back. */
static long odd(int n, const char *parent);
static long even(int n, const char *parent) {
    char mine[24];
    snprintf(mine, sizeof mine, "even-%d", n);
    if (n % 40 == 0)
        note("down %s (parent %s)\n", mine, parent);
    long below = n == 0 ? 0 : odd(n - 1, mine);
    return below + (long)strlen(mine) + (strncmp(mine, "even-", 5) == 0 ? 1 : 1000);
}
static long odd(int n, const char *parent) {
    char mine[24];
    snprintf(mine, sizeof mine, "odd-%d", n);
    long below = even(n - 1, mine);
    return below + (long)strlen(mine) + (strncmp(mine, "odd-", 4) == 0 ? 1 : 1000);
}

static void first_handler(void) { fprintf(stderr, "atexit: first registered, runs last\n"); }
static void second_handler(void) {
    printf("atexit: %lu comparisons in all\n", compares);
    fflush(stdout);
}

int main(int argc, char **argv) {
    atexit(first_handler);
    atexit(second_handler);
    int n = argc > 1 ? atoi(argv[1]) : 60;
    if (n < 2)
        n = 2;
    int *v = malloc((size_t)n * sizeof *v);
    unsigned seed = 12345;
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        v[i] = (int)((seed >> 8) % 1000);
    }
    qsort(v, (size_t)n, sizeof *v, by_value);
    for (int i = 1; i < n; i++) {
        if (v[i - 1] > v[i]) {
            fprintf(stderr, "not sorted at %d\n", i);
            return 2;
        }
    }
    note("sorted %d values: first %d, last %d\n", n, v[0], v[n - 1]);
    int key = v[n / 3];
    int *found = bsearch(&key, v, (size_t)n, sizeof *v, by_value);
    note("bsearch %d: %s\n", key, found && *found == key ? "found" : "missing");

    long acc = 3;
    for (int i = 0; i < 9; i++)
        acc = steps[i % 3](acc, i + 1);
    note("steps give %ld\n", acc);

    note("mutual recursion gives %ld\n", even(200, "main"));

    char line[64];
    int lines = 0;
    size_t bytes = 0;
    while (fgets(line, sizeof line, stdin)) {
        lines++;
        bytes += strlen(line);
        line[strcspn(line, "\n")] = 0;
        note("stdin line %d: [%s]\n", lines, line);
    }
    note("stdin: %d lines, %zu bytes\n", lines, bytes);
    free(v);
    exit(lines > 0 ? 5 : 6);
}
