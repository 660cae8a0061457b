/* Reads the CMOS clock as Linux does: register A (update in progress?), then the year.
   Reports both. */
.intel_syntax noprefix
#include "defs.inc"
.code64
.text
.globl _start
_start:
    mov al, 0x0a
    out 0x70, al
    in al, 0x71
    movzx eax, al
    call report64
    mov al, 0x09
    out 0x70, al
    in al, 0x71
    movzx eax, al
    call report64
    jmp reset

#include "probe.inc"
