/* Drives virtio-net in slot 0: VERSION_1 and MAC negotiated, rx (queue 0) and tx (queue 1) set
   up; sends one Ethernet frame (broadcast, EtherType 0x88b5, payload "cove-net-tx") and waits
   for one to arrive. Reports: the MAC from config space, 1 once the frame was sent, the
   received chain's used length, and the first 8 bytes of the received payload. */
.intel_syntax noprefix
#include "defs.inc"
#include "virtio_defs.inc"
.set RXBUF, 0x80000
.set TXBUF, 0x81000
.code64
.text
.globl _start
_start:
    call map_gap
    mov r15, VIRTIO_BASE
    mov edx, 1
    mov esi, 0x20
    mov ecx, 2
    call virtio_init_queues

    /* The MAC, from config space. */
    mov eax, [r15 + 0x100]
    movzx edx, word ptr [r15 + 0x104]
    shl rdx, 32
    or rax, rdx
    mov rbx, rax
    call report64

    /* A receive buffer: header + a full frame. */
    mov qword ptr [QBASE], RXBUF
    mov dword ptr [QBASE + 8], 12 + 1514
    mov word ptr [QBASE + 12], 2
    mov word ptr [QBASE + 0x1000 + 4], 0
    mov word ptr [QBASE + 0x1000 + 2], 1
    mov dword ptr [r15 + 0x50], 0

    /* The frame to send: a zero header, then broadcast, our MAC, 0x88b5, the payload. */
    mov rdi, TXBUF
    mov qword ptr [rdi], 0
    mov dword ptr [rdi + 8], 0
    mov dword ptr [rdi + 12], 0xffffffff
    mov word ptr [rdi + 16], 0xffff
    mov [rdi + 18], ebx
    shr rbx, 32
    mov [rdi + 22], bx
    mov word ptr [rdi + 24], 0xb588          /* 0x88b5, network order */
    mov rax, 0x74656e2d65766f63              /* "cove-net" */
    mov [rdi + 26], rax
    mov dword ptr [rdi + 34], 0x0078742d     /* "-tx" */
    mov qword ptr [QBASE + 0x3000], TXBUF
    mov dword ptr [QBASE + 0x3000 + 8], 12 + 60
    mov word ptr [QBASE + 0x3000 + 12], 0
    mov word ptr [QBASE + 0x3000 + 0x1000 + 4], 0
    mov word ptr [QBASE + 0x3000 + 0x1000 + 2], 1
    mov dword ptr [r15 + 0x50], 1
    mov edx, 2000000
2:  cmp word ptr [QBASE + 0x3000 + 0x2000 + 2], 1
    je 3f
    dec edx
    jnz 2b
    mov eax, 0xbad00f1
    call report64
    jmp reset
3:  mov eax, 1
    call report64

    /* Wait for a frame from the host. */
    mov edx, 20000000
4:  cmp word ptr [QBASE + 0x2000 + 2], 1
    je 5f
    dec edx
    jnz 4b
    mov eax, 0xbad00f2
    call report64
    jmp reset
5:  mov eax, [QBASE + 0x2000 + 8]
    call report64
    mov rax, [RXBUF + 12 + 14]
    call report64
    jmp reset

#include "virtio.inc"
#include "probe.inc"
