/* Drives virtio-rng in slot 0: 64 bytes of entropy into a device-writable buffer. Reports the
   used length, whether the bytes are non-zero, and the interrupt status. */
.intel_syntax noprefix
#include "defs.inc"
#include "virtio_defs.inc"
.code64
.text
.globl _start
_start:
    call map_gap
    mov r15, VIRTIO_BASE
    mov edx, 4
    call virtio_init
    mov qword ptr [DESC], 0x50000
    mov dword ptr [DESC + 8], 64
    mov word ptr [DESC + 12], 2              /* WRITE */
    xor ecx, ecx
    call virtio_submit
    mov eax, [USED + 8]                      /* used.ring[0].len */
    call report64
    xor eax, eax
    mov rsi, 0x50000
    mov ecx, 8
1:  or rax, [rsi]
    add rsi, 8
    dec ecx
    jnz 1b
    test rax, rax
    setnz al
    movzx eax, al
    call report64
    mov eax, [r15 + 0x60]                    /* InterruptStatus */
    call report64
    jmp reset

#include "virtio.inc"
#include "probe.inc"
