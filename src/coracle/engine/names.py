"""Random container names in Docker's adjective_noun style."""

from __future__ import annotations

import secrets

ADJECTIVES = (
    "agile bold brave bright calm clever cool crisp eager fair fancy gentle happy hardy jolly keen "
    "kind lively lucky merry mighty nimble noble plucky proud quick quiet rapid sharp shy steady "
    "sturdy swift tender tidy vivid warm wise witty zealous"
).split()
NOUNS = (
    "albatross auk bittern cormorant crane curlew dunlin egret eider fulmar gannet godwit grebe "
    "guillemot heron kittiwake knot lapwing merganser osprey oystercatcher petrel plover puffin "
    "razorbill redshank sanderling scoter shag shearwater skua smew snipe stint tern turnstone "
    "whimbrel"
).split()


def random_name() -> str:
    return f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}"
