/* Brings virtio-blk up and reads sector 0 (reports its status and first qword), then waits
   for the u64 at FLAG to turn non-zero — set by the test after a snapshot is restored in
   another process — and, without touching the device's setup again, writes the buffer to
   sector 1 (reports the status). */
.intel_syntax noprefix
#include "defs.inc"
#include "virtio_defs.inc"
.code64
.text
.globl _start
.set HDR, 0x50000
.set STATUS, 0x50100
.set BUF, 0x51000
.set FLAG, 0x58000
_start:
    call map_gap
    mov r15, VIRTIO_BASE
    mov edx, 2
    call virtio_init
    mov qword ptr [DESC], HDR
    mov dword ptr [DESC + 8], 16
    mov word ptr [DESC + 12], 1
    mov word ptr [DESC + 14], 1
    mov qword ptr [DESC + 16], BUF
    mov dword ptr [DESC + 24], 512
    mov word ptr [DESC + 28], 3
    mov word ptr [DESC + 30], 2
    mov qword ptr [DESC + 32], STATUS
    mov dword ptr [DESC + 40], 1
    mov word ptr [DESC + 44], 2
    mov dword ptr [HDR], 0
    mov qword ptr [HDR + 8], 0
    mov byte ptr [STATUS], 0xff
    xor ecx, ecx
    call virtio_submit
    movzx eax, byte ptr [STATUS]
    call report64
    mov rax, [BUF]
    call report64
1:  cmp qword ptr [FLAG], 0
    je 1b
    mov dword ptr [HDR], 1
    mov qword ptr [HDR + 8], 1
    mov word ptr [DESC + 28], 1
    mov byte ptr [STATUS], 0xff
    mov ecx, 1
    call virtio_submit
    movzx eax, byte ptr [STATUS]
    call report64
    jmp reset

#include "virtio.inc"
#include "probe.inc"
