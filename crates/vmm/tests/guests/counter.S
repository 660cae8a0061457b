/* Adds one to the u64 at [rsi] forever. */
.intel_syntax noprefix
.code64
.text
.globl _start
_start:
    add qword ptr [rsi], 1
    jmp _start
