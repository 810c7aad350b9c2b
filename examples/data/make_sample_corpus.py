#!/usr/bin/env python3
"""Generate ChatFlow's small embedded sample corpus (deterministic).

Writes four JSONL files beside this script (a few hundred KB in all), the default data of
``make demo`` and of the tests:

- ``zh_text.jsonl``:  ``{"text": ...}`` Chinese paragraphs.
- ``en_text.jsonl``:  ``{"text": ...}`` English paragraphs.
- ``parallel.jsonl``: ``{"zh": ..., "en": ...}`` aligned translations (each pair is rendered from
  the same template slot values in both languages, so the two sides say the same thing).
- ``instruct.jsonl``: Alpaca-style ``{"instruction", "input", "output"}`` records and multi-turn
  ``{"conversations": [{"from": "system|human|gpt", "value": ...}]}`` records (arithmetic,
  translation requests, simple questions).

Sentences are composed from hand-written bilingual vocabularies and templates. Run
``python examples/data/make_sample_corpus.py [--out-dir DIR] [--seed N]``; the same seed always
produces byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable

# (zh, en, plural). English subjects are lower-case unless proper names; sentences capitalize.
PEOPLE = [
    ("我的朋友", "my friend", False),
    ("这位老师", "the teacher", False),
    ("我的妹妹", "my younger sister", False),
    ("那个学生", "that student", False),
    ("我们的邻居", "our neighbor", False),
    ("这位医生", "the doctor", False),
    ("小王", "Xiao Wang", False),
    ("李老师", "Teacher Li", False),
    ("我的父亲", "my father", False),
    ("那位工程师", "that engineer", False),
    ("我的奶奶", "my grandmother", False),
    ("孩子们", "the children", True),
    ("我的同事们", "my colleagues", True),
    ("这些游客", "these tourists", True),
    ("我们", "we", True),
    ("他们", "they", True),
]
# (zh place used after 在, en phrase used after "at")
PLACES = [
    ("公园", "the park"),
    ("图书馆", "the library"),
    ("学校", "school"),
    ("家里", "home"),
    ("咖啡馆", "the coffee shop"),
    ("博物馆", "the museum"),
    ("办公室", "the office"),
    ("海边", "the beach"),
    ("火车站", "the train station"),
    ("市场", "the market"),
    ("花园", "the garden"),
    ("体育馆", "the gym"),
]
TIMES = [
    ("每天早上", "every morning"),
    ("周末", "on weekends"),
    ("每天晚上", "every evening"),
    ("下午", "in the afternoon"),
    ("每个星期一", "every Monday"),
    ("假期里", "during the holidays"),
    ("午饭以后", "after lunch"),
]
# (zh verb phrase, en base form, en third person singular, en gerund)
ACTIVITIES = [
    ("看书", "read books", "reads books", "reading books"),
    ("写信", "write letters", "writes letters", "writing letters"),
    ("喝茶", "drink tea", "drinks tea", "drinking tea"),
    ("学习英语", "study English", "studies English", "studying English"),
    ("学习中文", "study Chinese", "studies Chinese", "studying Chinese"),
    ("跑步", "go running", "goes running", "running"),
    ("画画", "paint pictures", "paints pictures", "painting pictures"),
    ("听音乐", "listen to music", "listens to music", "listening to music"),
    ("打篮球", "play basketball", "plays basketball", "playing basketball"),
    ("弹钢琴", "play the piano", "plays the piano", "playing the piano"),
    ("拍照片", "take photos", "takes photos", "taking photos"),
    ("和朋友聊天", "chat with friends", "chats with friends", "chatting with friends"),
    (
        "照顾花草",
        "take care of the plants",
        "takes care of the plants",
        "taking care of the plants",
    ),
    ("练习书法", "practice calligraphy", "practices calligraphy", "practicing calligraphy"),
    ("做数学题", "solve math problems", "solves math problems", "solving math problems"),
]
ADJECTIVES = [
    ("有趣", "interesting"),
    ("放松", "relaxing"),
    ("有意义", "meaningful"),
    ("不容易", "not easy"),
    ("重要", "important"),
    ("快乐", "enjoyable"),
]
CITIES = [
    ("北京", "Beijing"),
    ("上海", "Shanghai"),
    ("广州", "Guangzhou"),
    ("深圳", "Shenzhen"),
    ("成都", "Chengdu"),
    ("杭州", "Hangzhou"),
    ("西安", "Xi'an"),
    ("伦敦", "London"),
    ("纽约", "New York"),
    ("巴黎", "Paris"),
    ("东京", "Tokyo"),
    ("悉尼", "Sydney"),
]
WEATHER = [
    ("很晴朗", "sunny"),
    ("多云", "cloudy"),
    ("有点冷", "a little cold"),
    ("非常热", "very hot"),
    ("很温暖", "warm"),
    ("有大风", "very windy"),
]
FRUITS = [
    ("苹果", "apples"),
    ("橙子", "oranges"),
    ("梨", "pears"),
    ("桃子", "peaches"),
    ("芒果", "mangoes"),
    ("香蕉", "bananas"),
]
FUTURE = [
    ("明年春天", "next spring"),
    ("下个月", "next month"),
    ("今年夏天", "this summer"),
    ("国庆节期间", "during the National Day holiday"),
    ("寒假的时候", "during the winter vacation"),
]
SIGHTS = [
    ("博物馆", "museums"),
    ("古老街道", "old streets"),
    ("公园", "parks"),
    ("美食市场", "food markets"),
    ("历史建筑", "historic buildings"),
]
GOALS = [
    ("通过考试", "pass the exam"),
    ("保持健康", "stay healthy"),
    ("找到更好的工作", "find a better job"),
    ("参加比赛", "take part in the competition"),
]
FACTS = [
    ("水在一百摄氏度时沸腾。", "Water boils at one hundred degrees Celsius."),
    ("地球绕着太阳转，一年转一圈。", "The Earth goes around the Sun once a year."),
    (
        "月亮本身不发光，它反射太阳的光。",
        "The Moon does not shine by itself; it reflects sunlight.",
    ),
    ("一个星期有七天。", "A week has seven days."),
    ("植物需要阳光、水和空气才能生长。", "Plants need sunlight, water and air to grow."),
    ("长江是中国最长的河流。", "The Yangtze is the longest river in China."),
    (
        "人的心脏不停地跳动，把血液送到全身。",
        "The human heart beats all the time and pumps blood through the whole body.",
    ),
    ("冰是固态的水。", "Ice is water in solid form."),
    ("经常锻炼对身体有好处。", "Regular exercise is good for the body."),
    ("读书可以让人学到新的知识。", "Reading lets people learn new things."),
    ("蜜蜂会采集花粉并酿造蜂蜜。", "Bees collect pollen and make honey."),
    ("一年有十二个月。", "A year has twelve months."),
    ("大熊猫主要吃竹子。", "Giant pandas mainly eat bamboo."),
    ("光的速度比声音的速度快得多。", "Light travels much faster than sound."),
]
# (zh country, en country, zh capital, en capital)
CAPITALS = [
    ("法国", "France", "巴黎", "Paris"),
    ("日本", "Japan", "东京", "Tokyo"),
    ("中国", "China", "北京", "Beijing"),
    ("英国", "the United Kingdom", "伦敦", "London"),
    ("德国", "Germany", "柏林", "Berlin"),
    ("意大利", "Italy", "罗马", "Rome"),
    ("西班牙", "Spain", "马德里", "Madrid"),
    ("加拿大", "Canada", "渥太华", "Ottawa"),
    ("澳大利亚", "Australia", "堪培拉", "Canberra"),
    ("俄罗斯", "Russia", "莫斯科", "Moscow"),
    ("韩国", "South Korea", "首尔", "Seoul"),
    ("埃及", "Egypt", "开罗", "Cairo"),
    ("印度", "India", "新德里", "New Delhi"),
]
ZH_NUM = "零一二三四五六七八九十"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _verb(base: str, third: str, plural: bool) -> str:
    return base if plural else third


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """One aligned (zh, en) sentence from a randomly chosen template."""
    kind = rng.randrange(7)
    s_zh, s_en, plural = rng.choice(PEOPLE)
    if kind == 0:
        t, p, a = rng.choice(TIMES), rng.choice(PLACES), rng.choice(ACTIVITIES)
        return (
            f"{s_zh}{t[0]}在{p[0]}{a[0]}。",
            f"{_cap(s_en)} {_verb(a[1], a[2], plural)} at {p[1]} {t[1]}.",
        )
    if kind == 1:
        adj, a = rng.choice(ADJECTIVES), rng.choice(ACTIVITIES)
        think = "think" if plural else "thinks"
        return (
            f"{s_zh}觉得{a[0]}很{adj[0]}。",
            f"{_cap(s_en)} {think} that it is {adj[1]} to {a[1]}.",
        )
    if kind == 2:
        c, w, deg = rng.choice(CITIES), rng.choice(WEATHER), rng.randint(-5, 38)
        return (
            f"今天{c[0]}的天气{w[0]}，气温大约{deg}度。",
            f"Today the weather in {c[1]} is {w[1]}, and the temperature is about {deg} degrees.",
        )
    if kind == 3:
        f, n = rng.choice(FRUITS), rng.randint(2, 12)
        price = n * rng.randint(2, 6)
        return (
            f"{s_zh}买了{n}个{f[0]}，一共花了{price}元。",
            f"{_cap(s_en)} bought {n} {f[1]} and spent {price} yuan in total.",
        )
    if kind == 4:
        when, c, sight = rng.choice(FUTURE), rng.choice(CITIES), rng.choice(SIGHTS)
        plan = "plan" if plural else "plans"
        return (
            f"{s_zh}打算{when[0]}去{c[0]}旅行，参观那里的{sight[0]}。",
            f"{_cap(s_en)} {plan} to travel to {c[1]} {when[1]} to visit its {sight[1]}.",
        )
    if kind == 5:
        g, a, h = rng.choice(GOALS), rng.choice(ACTIVITIES), rng.randint(1, 4)
        spend = "spend" if plural else "spends"
        hours = "hour" if h == 1 else "hours"
        return (
            f"为了{g[0]}，{s_zh}每天花{ZH_NUM[h] if h != 2 else '两'}个小时{a[0]}。",
            f"To {g[1]}, {s_en} {spend} {h} {hours} a day {a[3]}.",
        )
    return rng.choice(FACTS)


def paragraph_pair(rng: random.Random, lo: int, hi: int) -> tuple[str, str]:
    """A paragraph of ``lo..hi`` aligned sentences (zh joined without spaces, en with)."""
    pairs = [sentence_pair(rng) for _ in range(rng.randint(lo, hi))]
    return "".join(p[0] for p in pairs), " ".join(p[1] for p in pairs)


def arithmetic(rng: random.Random, zh: bool) -> dict:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    if zh:
        word = {"+": "加", "-": "减", "*": "乘以"}[op]
        return {
            "instruction": f"计算 {a} {word} {b} 等于多少。",
            "input": "",
            "output": f"{a} {op} {b} = {value}。答案是 {value}。",
        }
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    return {
        "instruction": f"What is {a} {word} {b}?",
        "input": "",
        "output": f"{a} {op} {b} = {value}. The answer is {value}.",
    }


def translation_request(rng: random.Random) -> dict:
    zh, en = paragraph_pair(rng, 1, 2)
    if rng.random() < 0.5:
        return {
            "instruction": "Translate the following Chinese text into English.",
            "input": zh,
            "output": en,
        }
    return {"instruction": "把下面的英文翻译成中文。", "input": en, "output": zh}


def capital_question(rng: random.Random) -> dict:
    czh, cen, kzh, ken = rng.choice(CAPITALS)
    if rng.random() < 0.5:
        return {
            "instruction": f"{czh}的首都是哪里？",
            "input": "",
            "output": f"{czh}的首都是{kzh}。",
        }
    return {
        "instruction": f"What is the capital of {cen}?",
        "input": "",
        "output": f"The capital of {cen} is {ken}.",
    }


def conversation(rng: random.Random) -> dict:
    """A multi-turn chat: a question, then a follow-up about the answer."""
    turns = []
    zh = rng.random() < 0.5
    if rng.random() < 0.6:
        turns.append(
            {
                "from": "system",
                "value": "你是一个乐于助人的中英双语助手。"
                if zh
                else "You are a helpful bilingual assistant.",
            }
        )
    czh, cen, kzh, ken = rng.choice(CAPITALS)
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    if zh:
        turns += [
            {"from": "human", "value": f"{czh}的首都是哪里？"},
            {"from": "gpt", "value": f"{czh}的首都是{kzh}。"},
            {"from": "human", "value": "请把你的回答翻译成英文。"},
            {"from": "gpt", "value": f"The capital of {cen} is {ken}."},
            {"from": "human", "value": f"再帮我算一下 {a} 加 {b}。"},
            {"from": "gpt", "value": f"{a} + {b} = {a + b}。"},
        ]
    else:
        turns += [
            {"from": "human", "value": f"What is the capital of {cen}?"},
            {"from": "gpt", "value": f"The capital of {cen} is {ken}."},
            {"from": "human", "value": "Please say that in Chinese."},
            {"from": "gpt", "value": f"{czh}的首都是{kzh}。"},
        ]
        if rng.random() < 0.5:
            zh_s, en_s = sentence_pair(rng)
            turns += [
                {"from": "human", "value": f"Translate into Chinese: {en_s}"},
                {"from": "gpt", "value": zh_s},
            ]
    return {"conversations": turns}


def _write_jsonl(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build(seed: int) -> dict[str, list[dict]]:
    """All four corpora as lists of records; each corpus has its own RNG stream."""

    def stream(name: str, n: int, make: Callable[[random.Random], dict]) -> list[dict]:
        rng = random.Random(f"{seed}:{name}")
        return [make(rng) for _ in range(n)]

    def instruct(rng: random.Random) -> dict:
        r = rng.random()
        if r < 0.25:
            return arithmetic(rng, zh=rng.random() < 0.5)
        if r < 0.5:
            return translation_request(rng)
        if r < 0.7:
            return capital_question(rng)
        return conversation(rng)

    return {
        "zh_text": stream("zh", 400, lambda rng: {"text": paragraph_pair(rng, 3, 8)[0]}),
        "en_text": stream("en", 300, lambda rng: {"text": paragraph_pair(rng, 3, 8)[1]}),
        "parallel": stream(
            "parallel", 500, lambda rng: dict(zip(("zh", "en"), paragraph_pair(rng, 1, 3)))
        ),
        "instruct": stream("instruct", 700, instruct),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for name, records in build(args.seed).items():
        path = os.path.join(args.out_dir, f"{name}.jsonl")
        _write_jsonl(path, records)
        print(f"{path}: {len(records)} records, {os.path.getsize(path) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
