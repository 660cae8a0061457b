/* A hostile driver of virtio-rng: in one notification, a buffer outside guest memory, a
   descriptor loop, a 4 GiB length, then one good request; then pokes MMIO offsets the
   transport does not have. Reports: whether the good request got random bytes, the used
   index, and what the unknown offsets read. */
.intel_syntax noprefix
#include "defs.inc"
#include "virtio_defs.inc"
.code64
.text
.globl _start
.set GOOD, 0x50000
_start:
    call map_gap
    mov r15, VIRTIO_BASE
    mov edx, 4
    call virtio_init
    /* desc 0: far outside memory. */
    mov rax, 0x7fff00000000
    mov [DESC], rax
    mov dword ptr [DESC + 8], 64
    mov word ptr [DESC + 12], 2
    /* desc 1 -> desc 2 -> desc 1: a loop. */
    mov qword ptr [DESC + 16], 0x60000
    mov dword ptr [DESC + 24], 16
    mov word ptr [DESC + 28], 3
    mov word ptr [DESC + 30], 2
    mov qword ptr [DESC + 32], 0x61000
    mov dword ptr [DESC + 40], 16
    mov word ptr [DESC + 44], 3
    mov word ptr [DESC + 46], 1
    /* desc 3: a 4 GiB - 1 length from inside memory. */
    mov qword ptr [DESC + 48], 0x62000
    mov dword ptr [DESC + 56], 0xffffffff
    mov word ptr [DESC + 60], 2
    /* desc 4: the good one. */
    mov qword ptr [DESC + 64], GOOD
    mov dword ptr [DESC + 72], 64
    mov word ptr [DESC + 76], 2
    mov word ptr [AVAIL + 4], 0
    mov word ptr [AVAIL + 6], 1
    mov word ptr [AVAIL + 8], 3
    mov word ptr [AVAIL + 10], 4
    mov word ptr [AVAIL + 2], 4
    mov dword ptr [r15 + 0x50], 0
    mov edx, 2000000
1:  mov rax, [GOOD]
    or rax, [GOOD + 8]
    jnz 2f
    dec edx
    jnz 1b
2:  test rax, rax
    setnz al
    movzx eax, al
    call report64
    movzx eax, word ptr [USED + 2]
    call report64
    /* Offsets the transport does not have: ignored, read as zero. */
    mov dword ptr [r15 + 0xfc], 0x12345678
    mov eax, [r15 + 0xfc]
    call report64
    mov dword ptr [r15 + 0x0c], 0xffffffff  /* VendorID is read-only */
    mov eax, [r15 + 0x08]
    call report64
    jmp reset

#include "virtio.inc"
#include "probe.inc"
