/* Counts in rax and stores each count to the u64 at [rsi]: after a restore the count in memory
   only goes on from where it was if the registers came back too. */
.intel_syntax noprefix
.code64
.text
.globl _start
_start:
    xor eax, eax
1:
    add rax, 1
    mov qword ptr [rsi], rax
    jmp 1b
