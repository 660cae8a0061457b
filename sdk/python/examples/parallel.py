"""The async SDK: several programs, each in its own sandbox, at once.

    COVE_HOST=… COVE_API_KEY=… python examples/parallel.py
"""

from __future__ import annotations

import asyncio

from cove import AsyncSandbox


async def run(n: int) -> str:
    async with await AsyncSandbox.create(image="busybox", ttl=120) as sbx:
        r = await sbx.commands.run(f"echo sandbox {n}: $(hostname)")
        return r.stdout.strip()


async def main() -> None:
    for line in await asyncio.gather(*(run(n) for n in range(3))):
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
