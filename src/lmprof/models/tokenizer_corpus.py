"""The small English text the built-in tokenizer is trained on.

It is embedded in the package so the tokenizer builds offline and byte-for-byte the same
everywhere. Changing a single character changes the learned merges, so any edit here
must bump `TOKENIZER_RECIPE_VERSION` in tokenizer.py (cached built-in models then rebuild).
"""

from __future__ import annotations

TOKENIZER_CORPUS = """\
User: Hello! How are you today?
Assistant: I am doing well, thank you for asking. How can I help you today?
User: Can you tell me what the weather is like in the morning by the sea?
Assistant: In the morning the air by the sea is often cool and a little wet. A light wind comes in
from the water, and the sky can be grey until the sun climbs higher and burns the fog away.
User: What should I cook for dinner tonight?
Assistant: A simple dinner could be rice with vegetables and a little chicken or beans. Cut an onion,
a carrot and a pepper, cook them in a pan with some oil, add the rice and water, and let it simmer
for twenty minutes. Taste it, add salt and pepper, and serve it warm.
User: Please explain how a computer reads a file.
Assistant: When a program asks for a file, the operating system finds where the file lives on the
disk, reads the blocks into memory, and hands the bytes to the program. Reading from memory is much
faster than reading from a disk, so the system keeps recently used blocks in a cache.

The small town sat at the end of a long valley, where the river turned west and the road turned
east. Every morning the baker opened his shop before the sun was up, and the smell of fresh bread
drifted down the street. Children walked to school in pairs, talking about the games they would
play in the afternoon. The old teacher, who had taught their parents and their grandparents, stood
at the door and greeted each of them by name.

In the spring the fields turned green, and farmers drove their tractors up and down the hills. In
the summer the days were long and warm, and families sat outside after dinner, watching the light
fade over the mountains. In the autumn the leaves turned red and gold, and the wind carried them
across the roads. In the winter snow covered the roofs, and the river froze at its edges.

A language model reads text as a sequence of tokens. Each token is a small piece of a word, a whole
word, or a mark of punctuation. The model looks at the tokens it has seen so far and predicts the
next one. To write a long answer, it predicts one token, adds it to the text, and then predicts the
next token again. The first step, which reads the whole prompt at once, is called the prefill. The
steps that follow, which add one token at a time, are called the decode steps. The prefill is
limited by how fast the machine can do arithmetic, while each decode step is limited by how fast it
can read the weights from memory.

Memory matters as much as speed. The weights of a model with one billion parameters take four
gigabytes in thirty two bit floating point numbers, two gigabytes in sixteen bit numbers, and about
half a gigabyte when they are stored with four bits each. While the model writes, it also keeps a
cache of keys and values for every token it has already seen, and this cache grows with the length
of the text and the number of requests served together.

User: What is the capital of France?
Assistant: The capital of France is Paris.
User: How many days are there in a week?
Assistant: There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday
and Sunday.
User: Write a short poem about the moon.
Assistant: The moon climbs slowly over the hill,
the night is quiet, the water still,
a silver light on every stone,
and I walk home, but not alone.
User: Thank you, that was lovely.
Assistant: You are welcome! Let me know if there is anything else I can do for you.

The train left the station at half past eight. Through the window the passengers watched the city
give way to small houses, then to farms, then to forests that stretched as far as they could see.
A woman in the corner read a book, a man next to her slept with his head against the glass, and a
young boy counted the bridges as they passed. When the train stopped at the last station, the air
smelled of pine trees and rain, and the platform was almost empty.

Numbers help us describe the world: one, two, three, four, five, six, seven, eight, nine, ten. A
hundred people filled the hall, and a thousand more listened on the radio. The meeting started at
10:30 and ended at 12:15, and the notes were shared with everyone on the team the next day.
"""
