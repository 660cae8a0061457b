/* Writes a line to COM1, then asks the i8042 for a reset. */
.intel_syntax noprefix
#include "defs.inc"
.code64
.text
.globl _start
_start:
    lea rsi, [rip + message]
    mov dx, COM1
next:
    mov al, [rsi]
    test al, al
    jz done
    out dx, al
    inc rsi
    jmp next
done:
    jmp reset
message:
    .asciz "Hello from a Cove guest\n"

#include "probe.inc"
