/* Marks the UART's scratch register, then counts in rax and stores each count to the u64 at [rsi]: after a restore the count in memory
   only goes on from where it was if the registers came back too. */
.intel_syntax noprefix
.code64
.text
.globl _start
_start:
    /* A mark in the UART's scratch register: device state a restore must bring back. */
    mov dx, 0x3ff
    mov al, 0x5a
    out dx, al
    xor eax, eax
1:
    add rax, 1
    mov qword ptr [rsi], rax
    jmp 1b
