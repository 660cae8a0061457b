/* Drives the multiport virtio-console in slot 0 as Linux's driver does: MULTIPORT negotiated,
   all six queues set up, DEVICE_READY, PORT_READY for the port the device adds, the port opened;
   then echoes the first message the host sends on the agent port back to it, uppercased.
   Reports: the control messages received after DEVICE_READY and after PORT_READY (counts), the
   length of the host's message, and the used index of the transmit queue at the end. */
.intel_syntax noprefix
#include "defs.inc"
#include "virtio_defs.inc"
.code64
.text
.globl _start
/* Queue q's rings: desc QBASE + q * 0x3000, avail + 0x1000, used + 0x2000; 8 entries each. */
.set CRX, 2
.set CTX, 3
.set PRX, 4
.set PTX, 5
.set CTRL_BUFS, 0x80000     /* 8 x 64 bytes for control messages from the device */
.set CTRL_OUT, 0x81000      /* control messages to the device */
.set DATA, 0x82000          /* the agent port's receive buffer */
_start:
    call map_gap
    mov r15, VIRTIO_BASE
    mov edx, 3
    mov esi, 0x2
    mov ecx, 6
    call virtio_init_queues

    /* Control receive: eight 64-byte buffers (descriptors 0..7 of queue 2). */
    mov rdi, QBASE + CRX * 0x3000
    xor ecx, ecx
2:  mov eax, ecx
    shl eax, 6
    add eax, CTRL_BUFS
    mov [rdi], rax
    mov dword ptr [rdi + 8], 64
    mov word ptr [rdi + 12], 2
    mov word ptr [QBASE + CRX * 0x3000 + 0x1000 + 4 + rcx * 2], cx
    add rdi, 16
    inc ecx
    cmp ecx, 8
    jne 2b
    mov word ptr [QBASE + CRX * 0x3000 + 0x1000 + 2], 8
    mov dword ptr [r15 + 0x50], CRX
    /* Agent port receive: one 4 KiB buffer. */
    mov qword ptr [QBASE + PRX * 0x3000], DATA
    mov dword ptr [QBASE + PRX * 0x3000 + 8], 4096
    mov word ptr [QBASE + PRX * 0x3000 + 12], 2
    mov word ptr [QBASE + PRX * 0x3000 + 0x1000 + 4], 0
    mov word ptr [QBASE + PRX * 0x3000 + 0x1000 + 2], 1
    mov dword ptr [r15 + 0x50], PRX

    /* DEVICE_READY (id ~0, as Linux sends it), then wait for the port to be added. */
    mov dword ptr [CTRL_OUT], 0xffffffff
    mov word ptr [CTRL_OUT + 4], 0
    mov word ptr [CTRL_OUT + 6], 1
    xor ebx, ebx                             /* control messages sent */
    call send_ctrl
    mov eax, 1
    call wait_ctrl_rx
    movzx eax, word ptr [QBASE + CRX * 0x3000 + 0x2000 + 2]
    call report64
    /* PORT_READY for port 1: the device names it and opens it. */
    mov dword ptr [CTRL_OUT + 8], 1
    mov word ptr [CTRL_OUT + 12], 3
    mov word ptr [CTRL_OUT + 14], 1
    call send_ctrl
    mov eax, 3
    call wait_ctrl_rx
    movzx eax, word ptr [QBASE + CRX * 0x3000 + 0x2000 + 2]
    call report64
    /* The guest opens the port. */
    mov dword ptr [CTRL_OUT + 16], 1
    mov word ptr [CTRL_OUT + 20], 6
    mov word ptr [CTRL_OUT + 22], 1
    call send_ctrl

    /* Wait for the host's message, uppercase it, send it back. */
    mov edx, 20000000
3:  cmp word ptr [QBASE + PRX * 0x3000 + 0x2000 + 2], 1
    je 4f
    dec edx
    jnz 3b
    mov eax, 0xbad00ff
    call report64
    jmp reset
4:  mov ecx, [QBASE + PRX * 0x3000 + 0x2000 + 8]   /* used len */
    mov eax, ecx
    call report64
    mov rsi, DATA
    mov edi, ecx
5:  test edi, edi
    jz 7f
    mov al, [rsi]
    cmp al, 'a'
    jb 6f
    cmp al, 'z'
    ja 6f
    sub al, 32
    mov [rsi], al
6:  inc rsi
    dec edi
    jmp 5b
7:  mov qword ptr [QBASE + PTX * 0x3000], DATA
    mov [QBASE + PTX * 0x3000 + 8], ecx
    mov word ptr [QBASE + PTX * 0x3000 + 12], 0
    mov word ptr [QBASE + PTX * 0x3000 + 0x1000 + 4], 0
    mov word ptr [QBASE + PTX * 0x3000 + 0x1000 + 2], 1
    mov dword ptr [r15 + 0x50], PTX
    mov edx, 20000000
8:  cmp word ptr [QBASE + PTX * 0x3000 + 0x2000 + 2], 1
    je 9f
    dec edx
    jnz 8b
9:  movzx eax, word ptr [QBASE + PTX * 0x3000 + 0x2000 + 2]
    call report64
    /* Stay up until the host has read the echo (it resets the VM itself). */
10: jmp 10b

/* send_ctrl: control message number rbx (8 bytes at CTRL_OUT + 8 * rbx) on queue 3. */
send_ctrl:
    mov eax, ebx
    shl eax, 3
    add eax, CTRL_OUT
    mov edi, ebx
    shl edi, 4
    mov [QBASE + CTX * 0x3000 + rdi], rax
    mov dword ptr [QBASE + CTX * 0x3000 + rdi + 8], 8
    mov word ptr [QBASE + CTX * 0x3000 + rdi + 12], 0
    mov word ptr [QBASE + CTX * 0x3000 + 0x1000 + 4 + rbx * 2], bx
    inc ebx
    mov word ptr [QBASE + CTX * 0x3000 + 0x1000 + 2], bx
    mov dword ptr [r15 + 0x50], CTX
    ret

/* wait_ctrl_rx: until the control receive queue's used index reaches eax. */
wait_ctrl_rx:
    mov edx, 20000000
1:  cmp word ptr [QBASE + CRX * 0x3000 + 0x2000 + 2], ax
    jae 2f
    dec edx
    jnz 1b
    mov eax, 0xbad00fe
    call report64
    jmp reset
2:  ret

#include "virtio.inc"
#include "probe.inc"
