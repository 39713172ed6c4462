"""The pregnancy risk colours (孕产妇妊娠风险评估与管理工作规范, 国卫办妇幼发〔2017〕35号) and
the criteria a grading chooses from, as data, grouped as the 规范's 妊娠风险评估分级 table
groups them (1 基本情况, 2 妊娠合并症, 3 妊娠并发症; red: 1 合并症, 2 并发症).

A grading's colour is the highest colour among its criteria, green < yellow < orange < red;
purple (infectious disease) is kept beside it rather than ranked with it, so a pregnancy can be
"orange+purple" (the 规范's note: 除紫色外，如同时存在不同颜色分类，按照较高风险的分级标识).

CLINICAL CHECK NEEDED: the rows below were written from the 规范's table as far as it is known
here, with long sub-items merged and labels shortened. The clinical lead must check every row
against the published document (and any provincial edition in force) before go-live; codes
follow the table's numbering so that the check can go line by line.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.errors import Invalid

LEVELS = ("green", "yellow", "orange", "red")  # ranked, lowest first; purple stands apart
COLOURS = (*LEVELS, "purple")
COLOUR_LABELS = {
    "green": ("绿色 低风险", "Green · low risk"),
    "yellow": ("黄色 一般风险", "Yellow · general risk"),
    "orange": ("橙色 较高风险", "Orange · higher risk"),
    "red": ("红色 高风险", "Red · high risk"),
    "purple": ("紫色 传染性疾病", "Purple · infectious disease"),
}


@dataclass(frozen=True)
class Criterion:
    code: str
    colour: str
    zh: str
    en: str
    needs_note: bool = False  # "other …": the note must say what


_ROWS = (
    ("G0", "green", "孕妇基本情况良好，未发现妊娠合并症、并发症", "In good health, no comorbidity or complication found"),
    # Yellow 一般风险 -- 1 基本情况
    ("Y1.1", "yellow", "年龄≥35岁或≤18岁", "Age ≥35 or ≤18"),
    ("Y1.2", "yellow", "BMI>25或<18.5", "BMI >25 or <18.5"),
    ("Y1.3", "yellow", "生殖道畸形", "Genital tract malformation"),
    ("Y1.4", "yellow", "骨盆狭小", "Small pelvis"),
    ("Y1.5", "yellow", "不良孕产史（流产≥3次、早产、围产儿死亡、出生缺陷、异位妊娠、滋养细胞疾病等）",
     "Poor obstetric history (≥3 miscarriages, preterm birth, perinatal death, birth defect, ectopic, GTD)"),
    ("Y1.6", "yellow", "瘢痕子宫", "Scarred uterus"),
    ("Y1.7", "yellow", "子宫肌瘤或卵巢囊肿≥5cm", "Uterine fibroid or ovarian cyst ≥5 cm"),
    ("Y1.8", "yellow", "盆腔手术史", "Previous pelvic surgery"),
    ("Y1.9", "yellow", "辅助生殖妊娠", "Assisted reproduction"),
    # Yellow -- 2 妊娠合并症
    ("Y2.1", "yellow", "心脏病（无需药物治疗、心功能正常）", "Heart disease needing no medication, normal function"),
    ("Y2.2", "yellow", "呼吸系统疾病（无需药物治疗、肺功能正常）", "Respiratory disease needing no medication, normal lung function"),
    ("Y2.3", "yellow", "肝炎病毒携带（表面抗原阳性、肝功能正常）", "Hepatitis virus carrier (HBsAg+, normal liver function)"),
    ("Y2.4", "yellow", "肾脏疾病（病情稳定、肾功能正常）", "Kidney disease, stable, normal function"),
    ("Y2.5", "yellow", "无需药物治疗的糖尿病（含妊娠期糖尿病）、甲状腺疾病、垂体泌乳素瘤",
     "Diabetes (incl. gestational), thyroid disease or prolactinoma needing no medication"),
    ("Y2.6a", "yellow", "血小板减少（PLT 50–100×10⁹/L）无出血倾向", "Thrombocytopenia 50–100×10⁹/L, no bleeding"),
    ("Y2.6b", "yellow", "贫血（Hb 60–110 g/L）", "Anaemia (Hb 60–110 g/L)"),
    ("Y2.7", "yellow", "癫痫（部分性发作）、重症肌无力（眼肌型）等", "Epilepsy (partial seizures), ocular myasthenia"),
    ("Y2.8", "yellow", "免疫系统疾病（无需药物治疗）", "Immune disease needing no medication"),
    ("Y2.9", "yellow", "尖锐湿疣、淋病等性传播疾病", "Sexually transmitted disease (condyloma, gonorrhoea…)"),
    ("Y2.10", "yellow", "吸毒史", "History of drug use"),
    ("Y2.11", "yellow", "其他合并症（请在备注中写明）", "Other comorbidity (describe in the note)", True),
    # Yellow -- 3 妊娠并发症
    ("Y3.1", "yellow", "双胎妊娠", "Twin pregnancy"),
    ("Y3.2", "yellow", "先兆早产", "Threatened preterm labour"),
    ("Y3.3", "yellow", "胎儿宫内生长受限", "Fetal growth restriction"),
    ("Y3.4", "yellow", "巨大儿", "Macrosomia"),
    ("Y3.5", "yellow", "妊娠期高血压疾病（橙色、红色所列者除外）", "Hypertensive disorder (other than those under orange/red)"),
    ("Y3.6", "yellow", "妊娠期肝内胆汁淤积症", "Intrahepatic cholestasis of pregnancy"),
    ("Y3.7", "yellow", "胎膜早破", "Premature rupture of membranes"),
    ("Y3.8", "yellow", "羊水过少", "Oligohydramnios"),
    ("Y3.9", "yellow", "羊水过多", "Polyhydramnios"),
    ("Y3.10", "yellow", "≥36周胎位不正", "Malpresentation at ≥36 weeks"),
    ("Y3.11", "yellow", "低置胎盘", "Low-lying placenta"),
    ("Y3.12", "yellow", "妊娠剧吐", "Hyperemesis gravidarum"),
    # Orange 较高风险 -- 1 基本情况
    ("O1.1", "orange", "年龄≥40岁", "Age ≥40"),
    ("O1.2", "orange", "BMI≥28", "BMI ≥28"),
    # Orange -- 2 妊娠合并症
    ("O2.1", "orange", "较严重心血管疾病（心功能II级、需药物治疗的心律失常、轻度瓣膜病、肺动脉高压<50mmHg等）",
     "Significant cardiovascular disease (NYHA II, arrhythmia on medication, mild valve disease, PAH <50 mmHg…)"),
    ("O2.2", "orange", "哮喘、脊柱侧弯、胸廓畸形等伴轻度肺功能不全", "Asthma, scoliosis or chest deformity with mild lung impairment"),
    ("O2.3", "orange", "原因不明的肝功能异常；仅需药物治疗的肝硬化、肠梗阻、消化道出血等",
     "Unexplained abnormal liver function; cirrhosis, obstruction or GI bleeding on medication only"),
    ("O2.4", "orange", "慢性肾病伴肾功能不全代偿期（肌酐超过正常上限）", "Chronic kidney disease, compensated (creatinine above normal)"),
    ("O2.5", "orange", "需药物治疗的糖尿病、甲状腺疾病、垂体泌乳素瘤；肾性尿崩症",
     "Diabetes, thyroid disease or prolactinoma on medication; nephrogenic diabetes insipidus"),
    ("O2.6a", "orange", "血小板减少（PLT 30–50×10⁹/L）", "Thrombocytopenia 30–50×10⁹/L"),
    ("O2.6b", "orange", "重度贫血（Hb 40–60 g/L）", "Severe anaemia (Hb 40–60 g/L)"),
    ("O2.6c", "orange", "凝血功能障碍无出血倾向；易栓症（如抗磷脂综合征）",
     "Coagulopathy without bleeding; thrombophilia (e.g. antiphospholipid syndrome)"),
    ("O2.7", "orange", "免疫系统疾病：小剂量激素6个月以上，无活动表现", "Immune disease on low-dose steroids ≥6 months, inactive"),
    ("O2.8", "orange", "恶性肿瘤治疗后无转移、无复发", "Treated cancer, no metastasis or relapse"),
    ("O2.9", "orange", "智力障碍", "Intellectual disability"),
    ("O2.10", "orange", "精神病缓解期", "Psychiatric illness in remission"),
    ("O2.11", "orange", "癫痫（失神发作）、重症肌无力（累及四肢或延髓肌）", "Epilepsy (absence seizures), generalised myasthenia"),
    ("O2.12", "orange", "其他较严重合并症（请在备注中写明）", "Other significant comorbidity (describe in the note)", True),
    # Orange -- 3 妊娠并发症
    ("O3.1", "orange", "三胎及以上妊娠", "Triplets or more"),
    ("O3.2", "orange", "Rh血型不合", "Rh incompatibility"),
    ("O3.3", "orange", "瘢痕子宫（距末次子宫手术<18个月）", "Scarred uterus, <18 months since the last uterine surgery"),
    ("O3.4", "orange", "瘢痕子宫伴中央性前置胎盘或可疑胎盘植入", "Scarred uterus with central placenta previa or suspected accreta"),
    ("O3.5", "orange", "各类子宫手术史≥2次（剖宫产、宫角妊娠、肌瘤挖除等）", "≥2 uterine operations (caesarean, cornual, myomectomy…)"),
    ("O3.6", "orange", "双胎、羊水过多伴心肺功能减退", "Twins or polyhydramnios with reduced heart/lung function"),
    ("O3.7", "orange", "重度子痫前期、慢性高血压合并子痫前期", "Severe pre-eclampsia; chronic hypertension with pre-eclampsia"),
    ("O3.8", "orange", "原因不明的发热", "Fever of unknown origin"),
    ("O3.9", "orange", "产后抑郁症、产褥期中暑、产褥感染等", "Postpartum depression, puerperal heatstroke or infection"),
    # Red 高风险 -- 1 妊娠合并症
    ("R1.1", "red", "严重心血管疾病（肺动脉高压≥50mmHg、复杂或紫绀型先心病、中重度瓣膜狭窄或换瓣术后、心肌病、"
     "感染性心内膜炎、急性心肌炎、妊娠期高血压性心脏病等）",
     "Severe cardiovascular disease (PAH ≥50 mmHg, complex/cyanotic CHD, moderate–severe stenosis or valve "
     "replacement, cardiomyopathy, endocarditis, acute myocarditis, hypertensive heart disease of pregnancy…)"),
    ("R1.2", "red", "严重呼吸系统疾病影响肺功能（哮喘反复发作、肺纤维化等）", "Severe respiratory disease (recurrent asthma, lung fibrosis…)"),
    ("R1.3", "red", "重型肝炎、肝硬化失代偿、严重消化道出血、急性胰腺炎等", "Fulminant hepatitis, decompensated cirrhosis, "
     "severe GI bleeding, acute pancreatitis…"),
    ("R1.4", "red", "急、慢性肾病伴高血压、肾功能不全（肌酐>正常上限1.5倍）", "Kidney disease with hypertension or "
     "insufficiency (creatinine >1.5× upper limit)"),
    ("R1.5", "red", "严重内分泌疾病（糖尿病伴严重并发症、甲亢伴心脏病等、嗜铬细胞瘤等）", "Severe endocrine disease "
     "(diabetes with severe complications, hyperthyroidism with heart disease, phaeochromocytoma…)"),
    ("R1.6", "red", "严重血液病（再障、PLT<30×10⁹/L或进行性下降或出血、Hb≤40 g/L、白血病、凝血障碍伴出血、血栓栓塞）",
     "Severe blood disease (aplastic anaemia, PLT <30 or falling or bleeding, Hb ≤40 g/L, leukaemia, bleeding "
     "coagulopathy, thromboembolism)"),
    ("R1.7", "red", "免疫系统疾病活动期", "Active immune disease"),
    ("R1.8", "red", "精神病急性期", "Acute psychiatric illness"),
    ("R1.9", "red", "妊娠期发现的恶性肿瘤，或治疗后复发、转移", "Cancer found in pregnancy, or relapsed/metastatic"),
    ("R1.10", "red", "脑血管畸形及手术史、癫痫全身发作、重症肌无力累及呼吸肌", "Cerebrovascular malformation or surgery, "
     "generalised seizures, myasthenia reaching the respiratory muscles"),
    ("R1.11", "red", "吸毒", "Current drug use"),
    ("R1.12", "red", "其他严重内、外科疾病（请在备注中写明）", "Other severe medical or surgical disease (describe in the note)", True),
    # Red -- 2 妊娠并发症
    ("R2.1", "red", "三胎及以上妊娠伴心肺功能减退", "Triplets or more with reduced heart/lung function"),
    ("R2.2", "red", "凶险性前置胎盘、胎盘早剥", "Pernicious placenta previa, placental abruption"),
    ("R2.3", "red", "红色所列疾病产后尚未稳定", "A red-listed disease not yet stable after delivery"),
    # Purple 传染性疾病 (all infectious diseases in pregnancy)
    ("P1", "purple", "病毒性肝炎", "Viral hepatitis"),
    ("P2", "purple", "梅毒", "Syphilis"),
    ("P3", "purple", "HIV感染及艾滋病", "HIV infection and AIDS"),
    ("P4", "purple", "结核病", "Tuberculosis"),
    ("P5", "purple", "重症感染性肺炎", "Severe infectious pneumonia"),
    ("P6", "purple", "特殊病毒感染（如寨卡病毒、禽流感等）", "Special viral infection (Zika, avian influenza…)"),
    ("P9", "purple", "其他传染性疾病（请在备注中写明）", "Other infectious disease (describe in the note)", True),
)

CRITERIA: dict[str, Criterion] = {row[0]: Criterion(*row) for row in _ROWS}


def by_colour() -> dict[str, list[Criterion]]:
    """The criteria grouped by colour, in the table's order (for the grading form)."""
    groups: dict[str, list[Criterion]] = {colour: [] for colour in COLOURS}
    for criterion in CRITERIA.values():
        groups[criterion.colour].append(criterion)
    return groups


@dataclass(frozen=True)
class Grade:
    """A risk colour: the highest of green/yellow/orange/red, plus purple beside it."""

    level: str = "green"
    infectious: bool = False

    @property
    def colour(self) -> str:
        """"orange", "purple" (infectious, nothing else above green) or "orange+purple"."""
        if not self.infectious:
            return self.level
        return "purple" if self.level == "green" else f"{self.level}+purple"

    @property
    def colours(self) -> tuple[str, ...]:
        """Each colour to show as its own badge."""
        return tuple(self.colour.split("+"))

    @property
    def headline(self) -> str:
        """One colour where only one fits (a consult's risk_colour): red, purple, orange, yellow, green."""
        if self.level == "red":
            return "red"
        return "purple" if self.infectious else self.level

    @property
    def label(self) -> str:
        """Chinese first: "橙色 较高风险 + 紫色 传染性疾病"."""
        return " + ".join(COLOUR_LABELS[c][0] for c in self.colours)

    @property
    def label_en(self) -> str:
        return " + ".join(COLOUR_LABELS[c][1] for c in self.colours)

    @classmethod
    def parse(cls, colour: str) -> "Grade":
        parts = (colour or "").split("+")
        levels = [p for p in parts if p in LEVELS]
        if any(p not in COLOURS for p in parts) or len(levels) > 1 or len(parts) > 2:
            raise Invalid(f"风险色无效 / not a risk colour: {colour!r}")
        return cls(levels[0] if levels else "green", "purple" in parts)


def grade_of(codes: list[str] | tuple[str, ...]) -> Grade:
    """The colour chosen criteria give: the highest non-purple colour, plus purple if any is purple.
    G0 (no risk found) stands alone; nothing chosen is refused rather than taken for green."""
    chosen = list(dict.fromkeys(c.strip() for c in codes if c and c.strip()))
    if not chosen:
        raise Invalid("请至少选择一项评估结果（无风险请选择 G0） / choose at least one criterion (G0 when none applies)")
    unknown = [c for c in chosen if c not in CRITERIA]
    if unknown:
        raise Invalid(f"未知的评估条目 / unknown criteria: {', '.join(unknown)}")
    if "G0" in chosen and len(chosen) > 1:
        raise Invalid("选择了风险条目时不能同时选择“基本情况良好” / G0 cannot be chosen with a risk criterion")
    colours = {CRITERIA[c].colour for c in chosen}
    level = max((c for c in colours if c in LEVELS), key=LEVELS.index, default="green")
    return Grade(level, "purple" in colours)
