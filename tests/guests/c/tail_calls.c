/* A threaded interpreter whose handlers tail-call the next one through a table of function
 * pointers (return_call_indirect), built with -mtail-call. One handler prints, so every
 * handler can reach a migration point, and a pause finds the stack holding only main and the
 * current handler: the handlers before it are gone. Argument: the number of rounds. */
#include <stdio.h>
#include <stdlib.h>

typedef struct Vm {
    long acc;
    long steps;
    const unsigned char *pc;
} Vm;

typedef long (*Handler)(Vm *vm, long round);

static long op_add(Vm *vm, long round);
static long op_mul(Vm *vm, long round);
static long op_print(Vm *vm, long round);
static long op_loop(Vm *vm, long round);

static Handler handlers[4] = {op_add, op_mul, op_print, op_loop};
static const unsigned char program[] = {0, 1, 0, 2, 3};

#define NEXT(vm, round) __attribute__((musttail)) return handlers[*(vm)->pc++]((vm), (round))

static long op_add(Vm *vm, long round) {
    vm->acc += round;
    vm->steps++;
    NEXT(vm, round);
}

static long op_mul(Vm *vm, long round) {
    vm->acc = (vm->acc * 31) % 1000003;
    vm->steps++;
    NEXT(vm, round);
}

/* Out of line, so that the handler itself keeps no frame on the C stack across its tail
 * call (clang 16 leaves such a frame allocated). */
__attribute__((noinline)) static void report(long round, long acc) {
    printf("round %ld acc %ld\n", round, acc);
}

static long op_print(Vm *vm, long round) {
    if (round % 1000 == 0) {
        report(round, vm->acc);
    }
    vm->steps++;
    NEXT(vm, round);
}

static long op_loop(Vm *vm, long round) {
    if (round == 0) {
        return vm->acc;
    }
    vm->pc = program;
    NEXT(vm, round - 1);
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 5000;
    Vm vm = {1, 0, program};
    long result = handlers[*vm.pc++](&vm, rounds);
    printf("result %ld after %ld steps\n", result, vm.steps);
    return 0;
}
