/* Says "K" on COM1, then asks the i8042 for a reset: the shortest whole life of a VM. */
.intel_syntax noprefix
.set COM1, 0x3f8
.code64
.text
.globl _start
_start:
    mov dx, COM1
    mov al, 'K'
    out dx, al
    mov al, 10
    out dx, al
    mov dx, 0x64
    mov al, 0xfe
    out dx, al
1:  hlt
    jmp 1b
