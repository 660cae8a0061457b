/*
 * Touches a port and an MMIO address no device claims, reports what the reads returned, then
 * a marker showing it carried on, then resets.
 */
.intel_syntax noprefix
#include "defs.inc"
.code64
.text
.globl _start
_start:
    mov dx, 0x1234
    mov al, 0x55
    out dx, al
    in eax, dx
    call report64
    mov rdi, 0x30000000                 /* identity mapped, not RAM: an MMIO exit */
    mov dword ptr [rdi], 0xdeadbeef
    mov eax, [rdi]
    call report64
    mov rax, 0xc0ffee
    call report64
    jmp reset

#include "probe.inc"
