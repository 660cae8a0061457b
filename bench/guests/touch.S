/* Writes one qword in each 4 KiB page of the 8 MiB from 16 MiB (8 MiB of guest memory touched),
   says "R" on COM1, then says "x" forever: a restored copy speaks at its first instruction. */
.intel_syntax noprefix
.set COM1, 0x3f8
.set BASE, 0x1000000
.set PAGES, 2048
.code64
.text
.globl _start
_start:
    mov rdi, BASE
    mov rcx, PAGES
1:  mov qword ptr [rdi], rcx
    add rdi, 4096
    dec rcx
    jnz 1b
    mov dx, COM1
    mov al, 'R'
    out dx, al
    mov al, 'x'
2:  out dx, al
    jmp 2b
