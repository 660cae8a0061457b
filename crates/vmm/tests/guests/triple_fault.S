/* An invalid opcode with an empty IDT: #UD cannot be delivered, then #DF, then a triple fault. */
.intel_syntax noprefix
.code64
.text
.globl _start
_start:
    ud2
