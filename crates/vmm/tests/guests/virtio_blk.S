/* Drives virtio-blk in slot 0: reads sector 2, writes it back to sector 3, reads the serial,
   discards sectors 8-15. Reports: status and a sum of the sector's qwords for the read; status
   of the write; the serial's first 8 bytes and GET_ID's status; the discard's status. */
.intel_syntax noprefix
#include "defs.inc"
#include "virtio_defs.inc"
.code64
.text
.globl _start
.set HDR, 0x50000
.set STATUS, 0x50100
.set BUF, 0x51000
_start:
    call map_gap
    mov r15, VIRTIO_BASE
    mov edx, 2
    call virtio_init
    /* The chain: header (readable) -> data -> status (writable). */
    mov qword ptr [DESC], HDR
    mov dword ptr [DESC + 8], 16
    mov word ptr [DESC + 12], 1              /* NEXT */
    mov word ptr [DESC + 14], 1
    mov qword ptr [DESC + 16], BUF
    mov dword ptr [DESC + 24], 512
    mov word ptr [DESC + 28], 3              /* NEXT | WRITE */
    mov word ptr [DESC + 30], 2
    mov qword ptr [DESC + 32], STATUS
    mov dword ptr [DESC + 40], 1
    mov word ptr [DESC + 44], 2              /* WRITE */

    /* Read sector 2. */
    mov dword ptr [HDR], 0                   /* VIRTIO_BLK_T_IN */
    mov qword ptr [HDR + 8], 2
    mov byte ptr [STATUS], 0xff
    xor ecx, ecx
    call virtio_submit
    movzx eax, byte ptr [STATUS]
    call report64
    xor eax, eax
    mov rsi, BUF
    mov ecx, 64
1:  add rax, [rsi]
    add rsi, 8
    dec ecx
    jnz 1b
    call report64

    /* Write it to sector 3: the data buffer becomes device-readable. */
    mov dword ptr [HDR], 1                   /* VIRTIO_BLK_T_OUT */
    mov qword ptr [HDR + 8], 3
    mov word ptr [DESC + 28], 1              /* NEXT */
    mov byte ptr [STATUS], 0xff
    mov ecx, 1
    call virtio_submit
    movzx eax, byte ptr [STATUS]
    call report64

    /* GET_ID: 20 bytes of serial. */
    mov dword ptr [HDR], 8                   /* VIRTIO_BLK_T_GET_ID */
    mov qword ptr [HDR + 8], 0
    mov dword ptr [DESC + 24], 20
    mov word ptr [DESC + 28], 3
    mov byte ptr [STATUS], 0xff
    mov ecx, 2
    call virtio_submit
    mov rax, [BUF]
    call report64
    movzx eax, byte ptr [STATUS]
    call report64

    /* DISCARD sectors 8-15: one 16-byte range (sector, sectors, flags), device-readable. */
    mov dword ptr [HDR], 11                  /* VIRTIO_BLK_T_DISCARD */
    mov qword ptr [HDR + 8], 0
    mov qword ptr [BUF], 8
    mov dword ptr [BUF + 8], 8
    mov dword ptr [BUF + 12], 0
    mov dword ptr [DESC + 24], 16
    mov word ptr [DESC + 28], 1              /* NEXT */
    mov byte ptr [STATUS], 0xff
    mov ecx, 3
    call virtio_submit
    movzx eax, byte ptr [STATUS]
    call report64
    jmp reset

#include "virtio.inc"
#include "probe.inc"
