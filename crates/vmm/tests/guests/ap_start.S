/* Brings up vCPU 1 as a PC's BSP does: copies a real-mode trampoline to 0x10000, enables its
   local APIC, sends INIT then two STARTUP IPIs (vector 0x10) to APIC id 1, and waits for the
   trampoline's mark. Reports the mark (0x42 when the AP ran, 0xbad00ff on a timeout). */
.intel_syntax noprefix
#include "defs.inc"
#include "virtio_defs.inc"
.set LAPIC, 0xfee00000
.set TRAMPOLINE, 0x10000
.set MARK, 0x11000
.code64
.text
.globl _start
_start:
    call map_gap                             /* the LAPIC is at the top of the 4th GiB */
    lea rsi, [rip + trampoline]
    mov rdi, TRAMPOLINE
    mov ecx, trampoline_end - trampoline
1:  mov al, [rsi]
    mov [rdi], al
    inc rsi
    inc rdi
    dec ecx
    jnz 1b
    mov r15, LAPIC
    mov dword ptr [r15 + 0xf0], 0x1ff        /* spurious vector register: APIC enabled */
    mov dword ptr [r15 + 0x310], 1 << 24     /* ICR high: APIC id 1 */
    mov dword ptr [r15 + 0x300], 0x4500      /* INIT, assert */
    mov dword ptr [r15 + 0x310], 1 << 24
    mov dword ptr [r15 + 0x300], 0x4610      /* STARTUP, vector 0x10 -> 0x10000 */
    mov dword ptr [r15 + 0x310], 1 << 24
    mov dword ptr [r15 + 0x300], 0x4610
    mov edx, 2000000
1:  cmp byte ptr [MARK], 0x42
    je 2f
    dec edx
    jnz 1b
    mov eax, 0xbad00ff
    call report64
    jmp reset
2:  movzx eax, byte ptr [MARK]
    call report64
    jmp reset

/* The AP starts here in real mode, CS:IP = 0x1000:0000. */
.code16
trampoline:
    mov ax, MARK >> 4                        /* real mode: a segment for the 20-bit address */
    mov ds, ax
    mov byte ptr ds:[0], 0x42
3:  hlt
    jmp 3b
trampoline_end:
.code64

#include "virtio.inc"
#include "probe.inc"
