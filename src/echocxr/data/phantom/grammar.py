"""CXR-Phantom report grammar: English and Chinese, normalised and raw.

Normalised reports state every predefined region in a fixed order, positive or negative (lines/tubes,
heart, mediastinum/hila, lungs: airspace, nodules/masses, atelectasis, edema; pleura, pneumothorax,
bones), then an Impression. Raw reports report by exception: only positives plus one generic sentence.

Each statement has three equally valid phrasings, picked with the text RNG only. That randomness is
independent of the image, so a model cannot predict the phrasing, only be consistent within a
statement: exactly the joint-token dependency that naive one-step decoding gets wrong.

Positive statements never contain a negation word and mention one finding each (or one bilateral pair),
which is what lets `echocxr.data.labeler` read generated reports back exactly.
"""

from __future__ import annotations

import numpy as np

from echocxr.data.phantom.findings import STREAM_TEXT, Finding, PhantomCase, case_rng

VARIANTS = ("normalised", "raw")

# ---------------------------------------------------------------------------------------------- English
EN: dict[str, list[str]] = {
    "devices_none": ["No lines or tubes are seen.", "There are no support devices.",
                     "No tubes, lines or devices are present."],
    "device_ett": ["An endotracheal tube is in place with its tip {cm} cm above the carina.",
                   "The endotracheal tube tip lies {cm} cm above the carina.",
                   "Endotracheal tube in situ, tip {cm} cm above the carina."],
    "device_ngt": ["A nasogastric tube passes below the diaphragm with its tip in the stomach.",
                   "The nasogastric tube tip projects over the stomach.",
                   "Nasogastric tube in situ, tip in the stomach."],
    "device_central_line": ["A {route} central venous catheter terminates in the {tip}.",
                            "The tip of the {route} central venous catheter lies in the {tip}.",
                            "{Route} central venous catheter in situ, tip in the {tip}."],
    "device_pacemaker": ["A {side} chest wall pacemaker is present with {leads} in the right heart.",
                         "There is a {side} chest wall pacemaker with {leads} projecting over the right heart.",
                         "{Side} chest wall pacemaker in situ with {leads} in the right heart."],
    "heart_normal": ["The heart size is normal.", "Heart size is within normal limits.",
                     "The cardiac silhouette is normal in size."],
    "cardiomegaly": ["The heart is enlarged.", "There is cardiomegaly.", "The cardiac silhouette is enlarged."],
    "hila_normal": ["The mediastinal and hilar contours are normal.", "The mediastinum and hila are unremarkable.",
                    "Mediastinal and hilar contours are within normal limits."],
    "hilar_one": ["The {side} hilum is enlarged.", "There is {side} hilar enlargement.",
                  "{Side} hilar enlargement is seen."],
    "hilar_both": ["Both hila are enlarged.", "There is bilateral hilar enlargement.",
                   "Bilateral hilar enlargement is seen."],
    "consolidation_none": ["There is no focal consolidation.", "No focal consolidation is seen.",
                           "No airspace consolidation is identified."],
    "consolidation": ["There is consolidation in the {side} {zone} zone.",
                      "{Side} {zone} zone consolidation is present.",
                      "Airspace consolidation is seen in the {side} {zone} zone."],
    "nodule_none": ["No pulmonary nodule or mass is seen.", "There is no nodule or mass.",
                    "No nodules or masses are identified."],
    "nodule": ["There is a {mm} mm nodule in the {side} {zone} zone.",
               "A {mm} mm nodule is seen in the {side} {zone} zone.",
               "{Side} {zone} zone pulmonary nodule measuring {mm} mm."],
    "mass": ["There is a {cm} cm mass in the {side} {zone} zone.",
             "A {cm} cm mass is seen in the {side} {zone} zone.",
             "{Side} {zone} zone mass measuring {cm} cm."],
    "atelectasis_none": ["There is no atelectasis.", "No atelectasis is seen.", "No evidence of atelectasis."],
    "atelectasis_one": ["There is {side} basal atelectasis.", "Plate-like atelectasis is seen at the {side} base.",
                        "{Side} basilar atelectasis is present."],
    "atelectasis_both": ["There is bibasilar atelectasis.", "Plate-like atelectasis is seen at both bases.",
                         "Bibasal atelectasis is present."],
    "edema_none": ["There is no pulmonary edema.", "No pulmonary edema is seen.",
                   "No evidence of pulmonary edema."],
    "edema": ["There is pulmonary edema.", "Features of pulmonary edema are present.", "Pulmonary edema is seen."],
    "effusion_none": ["There is no pleural effusion.", "No pleural effusion is seen.",
                      "No evidence of pleural effusion."],
    "effusion_one": ["There is a {size} {side} pleural effusion.", "A {size} pleural effusion is present on the {side}.",
                     "{Size} {side} pleural effusion is seen."],
    "effusion_both": ["There are {size} bilateral pleural effusions.", "{Size} pleural effusions are present bilaterally.",
                      "Bilateral {size} pleural effusions are seen."],
    "pneumothorax_none": ["There is no pneumothorax.", "No pneumothorax is seen.", "No evidence of pneumothorax."],
    "pneumothorax": ["There is a {side} pneumothorax.", "A {side}-sided pneumothorax is present.",
                     "{Side} pneumothorax is seen."],
    "bones": ["No acute osseous abnormality.", "The visualized bones are unremarkable.", "The bony thorax is intact."],
    "raw_normal": ["The lungs are clear. Heart size and mediastinal contours are normal.",
                   "The heart and lungs are within normal limits.",
                   "The cardiomediastinal silhouette and lungs are normal."],
    "raw_rest": ["Otherwise, the chest is unremarkable.", "The remainder of the examination is unremarkable.",
                 "No other abnormality is seen."],
    # impression items (no final period: the reference string adds it)
    "imp_normal": ["No acute cardiopulmonary abnormality", "No acute cardiopulmonary process",
                   "Normal chest radiograph"],
    "imp_devices": ["Support devices in satisfactory position", "Lines and tubes as described",
                    "Support devices as above"],
    "imp_cardiomegaly": ["Cardiomegaly", "Enlarged heart", "Enlarged cardiac silhouette"],
    "imp_hilar_one": ["{Side} hilar enlargement", "Enlarged {side} hilum", "{Side} hilar prominence"],
    "imp_hilar_both": ["Bilateral hilar enlargement", "Enlarged hila bilaterally", "Bilateral hilar prominence"],
    "imp_consolidation": ["{Side} {zone} zone consolidation", "Consolidation in the {side} {zone} zone",
                          "{Side} {zone} zone airspace consolidation"],
    "imp_nodule": ["{Side} {zone} zone nodule", "Nodule in the {side} {zone} zone", "{Side} {zone} zone pulmonary nodule"],
    "imp_mass": ["{Side} {zone} zone mass", "Mass in the {side} {zone} zone", "{Side} {zone} zone pulmonary mass"],
    "imp_atelectasis_one": ["{Side} basal atelectasis", "{Side} basilar atelectasis", "Atelectasis at the {side} base"],
    "imp_atelectasis_both": ["Bibasilar atelectasis", "Bibasal atelectasis", "Atelectasis at both bases"],
    "imp_edema": ["Pulmonary edema", "Findings consistent with pulmonary edema", "Pulmonary edema is present"],
    "imp_effusion_one": ["{Size} {side} pleural effusion", "{Size} {side}-sided pleural effusion",
                         "{Size} pleural effusion on the {side}"],
    "imp_effusion_both": ["{Size} bilateral pleural effusions", "Bilateral {size} pleural effusions",
                          "{Size} pleural effusions bilaterally"],
    "imp_pneumothorax": ["{Side} pneumothorax", "{Side}-sided pneumothorax", "Pneumothorax on the {side}"],
}
EN_WORDS = {
    "side": {"right": "right", "left": "left"}, "zone": {"upper": "upper", "middle": "middle", "lower": "lower"},
    "size": {"small": "small", "large": "large"},
    "route": {"right_ij": "right internal jugular", "left_subclavian": "left subclavian",
              "right_subclavian": "right subclavian"},
    "tip": {"svc": "superior vena cava", "cavoatrial": "cavoatrial junction"},
    "leads": {1: "a single lead", 2: "two leads"},
}

# ---------------------------------------------------------------------------------------------- Chinese
ZH: dict[str, list[str]] = {
    "devices_none": ["未见管线及置入装置。", "无留置管路或装置。", "未见支持装置影。"],
    "device_ett": ["气管插管在位，尖端位于隆突上方{cm}厘米。", "气管插管尖端距隆突约{cm}厘米。",
                   "可见气管插管，管端位于隆突上{cm}厘米处。"],
    "device_ngt": ["胃管经食管下行，尖端位于胃内。", "可见胃管，其尖端位于胃腔内。", "胃管在位，末端位于胃内。"],
    "device_central_line": ["经{route}置入中心静脉导管，尖端位于{tip}。", "{route}中心静脉导管在位，尖端位于{tip}。",
                            "可见{route}中心静脉导管，管端达{tip}。"],
    "device_pacemaker": ["{side}胸壁见起搏器影，{leads}投影于右心区。", "{side}胸壁可见心脏起搏器，{leads}位于右心。",
                         "可见{side}胸壁起搏器，{leads}走行至右心。"],
    "heart_normal": ["心影大小正常。", "心脏大小在正常范围内。", "心影不大。"],
    "cardiomegaly": ["心影增大。", "心脏体积增大。", "可见心影扩大。"],
    "hila_normal": ["纵隔及肺门影未见异常。", "纵隔、肺门结构正常。", "纵隔及双侧肺门影正常。"],
    "hilar_one": ["{side}肺门影增大。", "{side}肺门增大。", "可见{side}肺门影扩大。"],
    "hilar_both": ["双侧肺门影增大。", "两侧肺门增大。", "可见双侧肺门影扩大。"],
    "consolidation_none": ["双肺未见实变影。", "未见肺实变。", "肺内未见局灶性实变。"],
    "consolidation": ["{lung}{zone}见实变影。", "{lung}{zone}可见片状实变。", "可见{lung}{zone}实变。"],
    "nodule_none": ["双肺未见结节或肿块。", "未见肺结节及肿块。", "肺内未见结节或肿块影。"],
    "nodule": ["{lung}{zone}见一直径约{mm}毫米结节。", "{lung}{zone}可见{mm}毫米结节影。",
               "可见{lung}{zone}结节，大小约{mm}毫米。"],
    "mass": ["{lung}{zone}见一直径约{cm}厘米肿块。", "{lung}{zone}可见{cm}厘米肿块影。",
             "可见{lung}{zone}肿块，大小约{cm}厘米。"],
    "atelectasis_none": ["未见肺不张。", "无肺不张征象。", "双肺未见不张。"],
    "atelectasis_one": ["{lung}底见盘状肺不张。", "{lung}下叶可见线状肺不张。", "可见{lung}基底段肺不张。"],
    "atelectasis_both": ["双肺底见盘状肺不张。", "双肺下叶可见线状肺不张。", "可见双肺基底段肺不张。"],
    "edema_none": ["未见肺水肿。", "无肺水肿征象。", "双肺未见水肿。"],
    "edema": ["可见肺水肿。", "双肺呈肺水肿表现。", "提示肺水肿。"],
    "effusion_none": ["未见胸腔积液。", "双侧胸腔未见积液。", "无胸腔积液。"],
    "effusion_one": ["{side}胸腔{size}积液。", "{side}{size}胸腔积液。", "可见{side}{size}胸腔积液。"],
    "effusion_both": ["双侧胸腔{size}积液。", "双侧{size}胸腔积液。", "可见双侧{size}胸腔积液。"],
    "pneumothorax_none": ["未见气胸。", "无气胸征象。", "双侧未见气胸。"],
    "pneumothorax": ["{side}气胸。", "可见{side}气胸。", "{side}胸腔见气胸。"],
    "bones": ["骨性胸廓未见异常。", "所见骨质未见急性异常。", "胸廓骨质结构完整。"],
    "raw_normal": ["双肺清晰，心影及纵隔未见异常。", "心肺膈未见明显异常。", "心、肺、膈未见异常。"],
    "raw_rest": ["余胸部未见明显异常。", "其余未见异常。", "余心肺未见异常。"],
    "imp_normal": ["心肺未见急性异常", "胸部X线未见异常", "心肺未见明显异常"],
    "imp_devices": ["支持装置位置良好", "管线装置在位", "置入装置位置满意"],
    "imp_cardiomegaly": ["心影增大", "心脏增大", "心影扩大"],
    "imp_hilar_one": ["{side}肺门增大", "{side}肺门影增大", "{side}肺门影扩大"],
    "imp_hilar_both": ["双侧肺门增大", "双侧肺门影增大", "两侧肺门影扩大"],
    "imp_consolidation": ["{lung}{zone}实变", "{lung}{zone}实变影", "{lung}{zone}片状实变"],
    "imp_nodule": ["{lung}{zone}结节", "{lung}{zone}结节影", "{lung}{zone}肺结节"],
    "imp_mass": ["{lung}{zone}肿块", "{lung}{zone}肿块影", "{lung}{zone}占位性肿块"],
    "imp_atelectasis_one": ["{lung}底肺不张", "{lung}下叶肺不张", "{lung}基底段肺不张"],
    "imp_atelectasis_both": ["双肺底肺不张", "双肺下叶肺不张", "双肺基底段肺不张"],
    "imp_edema": ["肺水肿", "符合肺水肿表现", "提示肺水肿"],
    "imp_effusion_one": ["{side}{size}胸腔积液", "{side}胸腔{size}积液", "{side}胸腔积液（{size}）"],
    "imp_effusion_both": ["双侧{size}胸腔积液", "双侧胸腔{size}积液", "双侧胸腔积液（{size}）"],
    "imp_pneumothorax": ["{side}气胸", "{side}胸腔气胸", "可见{side}气胸"],
}
ZH_WORDS = {
    "side": {"right": "右侧", "left": "左侧"}, "lung": {"right": "右肺", "left": "左肺"},
    "zone": {"upper": "上野", "middle": "中野", "lower": "下野"}, "size": {"small": "少量", "large": "大量"},
    "route": {"right_ij": "右侧颈内静脉", "left_subclavian": "左侧锁骨下静脉", "right_subclavian": "右侧锁骨下静脉"},
    "tip": {"svc": "上腔静脉", "cavoatrial": "腔静脉心房交界处"},
    "leads": {1: "单根导线", 2: "两根导线"},
}

PHRASES = {"en": EN, "zh": ZH}


def _fmt_num(x: object) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _slots(f: Finding | None, language: str, **extra: object) -> dict[str, str]:
    words = EN_WORDS if language == "en" else ZH_WORDS
    vals: dict[str, object] = {}
    if f is not None:
        vals.update(side=f.side, zone=f.zone, size=f.size)
        vals.update(dict(f.attrs))
    vals.update(extra)
    out: dict[str, str] = {}
    for key, v in vals.items():
        if v is None:
            continue
        table = words.get(key)
        text = table[v] if table is not None and v in table else _fmt_num(v)
        out[key] = text
        out[key.capitalize()] = text[:1].upper() + text[1:]
    if language == "zh" and "side" in vals and vals["side"] is not None:
        out["lung"] = ZH_WORDS["lung"][vals["side"]]
    return out


class _Writer:
    """Picks phrasings with the text RNG; one draw per statement, in report order."""

    def __init__(self, language: str, rng: np.random.Generator):
        self.table = PHRASES[language]
        self.language = language
        self.rng = rng

    def say(self, key: str, f: Finding | None = None, **extra: object) -> str:
        options = self.table[key]
        template = options[int(self.rng.integers(len(options)))]
        return template.format(**_slots(f, self.language, **extra))


def _pairs(fs: list[Finding], same_size: bool = False) -> tuple[list[Finding], list[Finding]]:
    """Split findings of one kind into (bilateral representatives, one-sided findings)."""
    sides = {f.side: f for f in fs}
    if "right" in sides and "left" in sides and (not same_size or sides["right"].size == sides["left"].size):
        return [sides["right"]], []
    return [], fs


def _statements(case: PhantomCase, w: _Writer, normalised: bool) -> list[str]:
    out: list[str] = []
    devices = [f for f in case.findings if f.kind.startswith("device_")]
    if devices:
        for f in devices:
            if f.kind == "device_pacemaker":
                out.append(w.say(f.kind, f, side=f.get("side"), leads=f.get("leads")))
            else:
                out.append(w.say(f.kind, f))
    elif normalised:
        out.append(w.say("devices_none"))

    if case.of_kind("cardiomegaly"):
        out.append(w.say("cardiomegaly"))
    elif normalised:
        out.append(w.say("heart_normal"))

    both, ones = _pairs(case.of_kind("hilar_enlargement"))
    out += [w.say("hilar_both", f) for f in both] + [w.say("hilar_one", f) for f in ones]
    if normalised and not (both or ones):
        out.append(w.say("hila_normal"))

    cons = case.of_kind("consolidation")
    out += [w.say("consolidation", f) for f in cons]
    if normalised and not cons:
        out.append(w.say("consolidation_none"))

    lumps = case.of_kind("nodule") + case.of_kind("mass")
    out += [w.say(f.kind, f) for f in lumps]
    if normalised and not lumps:
        out.append(w.say("nodule_none"))

    both, ones = _pairs(case.of_kind("atelectasis"))
    out += [w.say("atelectasis_both", f) for f in both] + [w.say("atelectasis_one", f) for f in ones]
    if normalised and not (both or ones):
        out.append(w.say("atelectasis_none"))

    if case.of_kind("edema"):
        out.append(w.say("edema"))
    elif normalised:
        out.append(w.say("edema_none"))

    both, ones = _pairs(case.of_kind("effusion"), same_size=True)
    out += [w.say("effusion_both", f) for f in both] + [w.say("effusion_one", f) for f in ones]
    if normalised and not (both or ones):
        out.append(w.say("effusion_none"))

    ptx = case.of_kind("pneumothorax")
    out += [w.say("pneumothorax", f) for f in ptx]
    if normalised and not ptx:
        out.append(w.say("pneumothorax_none"))

    if normalised:
        out.append(w.say("bones"))
    elif case.is_normal:
        out.append(w.say("raw_normal"))
    else:
        out.append(w.say("raw_rest"))
    return out


def _impression(case: PhantomCase, w: _Writer) -> str:
    items: list[str] = []
    if case.of_kind("cardiomegaly"):
        items.append(w.say("imp_cardiomegaly"))
    both, ones = _pairs(case.of_kind("hilar_enlargement"))
    items += [w.say("imp_hilar_both", f) for f in both] + [w.say("imp_hilar_one", f) for f in ones]
    for kind in ("consolidation", "nodule", "mass"):
        items += [w.say(f"imp_{kind}", f) for f in case.of_kind(kind)]
    both, ones = _pairs(case.of_kind("atelectasis"))
    items += [w.say("imp_atelectasis_both", f) for f in both] + [w.say("imp_atelectasis_one", f) for f in ones]
    if case.of_kind("edema"):
        items.append(w.say("imp_edema"))
    both, ones = _pairs(case.of_kind("effusion"), same_size=True)
    items += [w.say("imp_effusion_both", f) for f in both] + [w.say("imp_effusion_one", f) for f in ones]
    items += [w.say("imp_pneumothorax", f) for f in case.of_kind("pneumothorax")]
    if not items:
        items.append(w.say("imp_normal"))
    if any(f.kind.startswith("device_") for f in case.findings):
        items.append(w.say("imp_devices"))
    if w.language == "zh":
        return "；".join(items) + "。"
    return ". ".join(items)


def write_report(case: PhantomCase, language: str = "en", variant: str = "normalised",
                 rng: np.random.Generator | None = None) -> tuple[str, str]:
    """(findings, impression) for a case. EN impressions carry no final period (the reference adds one)."""
    if language not in PHRASES:
        raise ValueError(f"unknown language {language!r}; expected one of {sorted(PHRASES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown report variant {variant!r}; expected one of {VARIANTS}")
    if rng is None:  # the text stream: independent of the image stream by construction
        rng = case_rng(case.seed, case.index, STREAM_TEXT, ("en", "zh").index(language), VARIANTS.index(variant))
    w = _Writer(language, rng)
    sep = " " if language == "en" else ""
    findings = sep.join(_statements(case, w, normalised=variant == "normalised"))
    return findings, _impression(case, w)
