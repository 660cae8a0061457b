/*
 * Reports what a 64-bit Linux kernel would see at entry: the zero page pointer (rsi), the
 * control registers and EFER, the e820 map, the command line and initramfs fields, the first
 * 8 bytes of the initramfs (0 without one); then echoes the command line to COM1 and resets.
 */
.intel_syntax noprefix
#include "defs.inc"
.code64
.text
.globl _start
_start:
    mov rbx, rsi                    /* the zero page */
    mov rax, rsi
    call report64
    mov rax, cr0
    call report64
    mov rax, cr3
    call report64
    mov rax, cr4
    call report64
    mov ecx, 0xc0000080             /* IA32_EFER */
    rdmsr
    shl rdx, 32
    or rax, rdx
    call report64

    movzx eax, byte ptr [rbx + 0x1e8]   /* e820_entries */
    call report64
    mov r12, rax
    lea r13, [rbx + 0x2d0]              /* e820_table */
e820_next:
    test r12, r12
    jz e820_done
    mov rax, [r13]
    call report64
    mov rax, [r13 + 8]
    call report64
    mov eax, [r13 + 16]
    call report64
    add r13, 20
    dec r12
    jmp e820_next
e820_done:
    mov eax, [rbx + 0x228]              /* hdr.cmd_line_ptr */
    call report64
    mov eax, [rbx + 0x238]              /* hdr.cmdline_size */
    call report64
    mov eax, [rbx + 0x218]              /* hdr.ramdisk_image */
    call report64
    mov eax, [rbx + 0x21c]              /* hdr.ramdisk_size */
    call report64
    xor eax, eax
    cmp dword ptr [rbx + 0x21c], 0
    je no_initramfs
    mov eax, [rbx + 0x218]
    mov rax, [rax]                      /* first 8 bytes of the initramfs */
no_initramfs:
    call report64

    /* The MP table as Linux finds it: the floating pointer at the EBDA's start, its config
       table, and the processor entries counted by walking the entries by type. */
    mov eax, [0x9fc00]                  /* "_MP_" */
    call report64
    mov edi, [0x9fc04]                  /* -> config table */
    mov eax, edi
    call report64
    movzx eax, word ptr [rdi + 34]      /* entry count */
    call report64
    movzx ecx, word ptr [rdi + 4]       /* base table length */
    add rcx, rdi                        /* end */
    lea rsi, [rdi + 44]                 /* first entry */
    xor eax, eax                        /* processors seen */
mp_next:
    cmp rsi, rcx
    jae mp_done
    cmp byte ptr [rsi], 0
    jne mp_other
    inc eax
    add rsi, 20
    jmp mp_next
mp_other:
    add rsi, 8
    jmp mp_next
mp_done:
    call report64

    mov esi, [rbx + 0x228]
    mov dx, COM1
cmdline_next:
    mov al, [rsi]
    test al, al
    jz cmdline_done
    out dx, al
    inc rsi
    jmp cmdline_next
cmdline_done:
    mov al, 10
    out dx, al
    jmp reset

#include "probe.inc"
