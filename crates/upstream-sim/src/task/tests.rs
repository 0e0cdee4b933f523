//! Unit tests of scripted answers: marker parsing, the hash and its
//! statistics, wrong answers, forms and styles, and judges. The wire shapes
//! per dialect are tested over HTTP in `tests/tasks.rs`.

use serde_json::json;

use super::*;

fn ask(text: &str) -> Ask {
    Ask { texts: vec![text.to_owned()], ..Ask::default() }
}

fn config(seed: u64, tasks: Vec<TaskScript>) -> SimConfig {
    SimConfig { task_seed: seed, tasks, ..SimConfig::default() }
}

fn text_of(reply: &Reply) -> &str {
    match &reply.body {
        Body::Text(t) => t,
        Body::Call { .. } => panic!("a call, not text: {reply:?}"),
    }
}

/// `marker` for item `i` of task `t` with answer `a`.
fn marker(t: &str, i: &str, a: &str) -> String {
    format!("[task:{t} item:{i} answer:{a}]")
}

/// Asserts that `hits` out of `n` trials of probability `p` lies within four
/// standard deviations of the mean: a fair draw fails this about once in
/// 16,000 runs, and these draws are fixed, so a pass is permanent.
fn assert_binomial(hits: usize, n: usize, p: f64) {
    let (n, hits) = (n as f64, hits as f64);
    let sd = (n * p * (1.0 - p)).sqrt();
    assert!((hits - n * p).abs() <= 4.0 * sd, "{hits} of {n} with p = {p}: more than 4 sd ({sd:.1}) from {}", n * p);
}

#[test]
fn markers_parse() {
    let texts = vec!["intro".to_owned(), "Q? [task:arith item:q7 answer:42] and [task:x item:y answer:z]".to_owned()];
    let m = find_marker(&texts).unwrap().unwrap();
    assert_eq!(m, Marker { task: "arith", item: "q7", answer: "42", tool: None });
    let texts = vec!["[task:t item:i tool:submit answer:a:b]".to_owned()];
    assert_eq!(
        find_marker(&texts).unwrap().unwrap(),
        Marker { task: "t", item: "i", answer: "a:b", tool: Some("submit") }
    );
    assert_eq!(find_marker(&["no marker [task] [judge]".to_owned()]).unwrap(), None);
    assert_eq!(find_marker(&[]).unwrap(), None);
}

#[test]
fn marked_bodies() {
    assert!(marked(br#"{"content":"Q [task:t item:i answer:a]"}"#));
    assert!(marked(b"[task:"));
    assert!(!marked(br#"{"content":"[[task] [judge] task:t"}"#));
    assert!(!marked(b"[task"));
    assert!(!marked(b""));
}

#[test]
fn malformed_markers_are_errors() {
    for bad in [
        "[task:t item:i answer:a",
        "[task:t item:i]",
        "[task:t item:i answer:]",
        "[task:t item:i answer:a answer:b]",
        "[task:t item:i answer:a colour:red]",
        "[task:t item:i answer a]",
    ] {
        let err = find_marker(&[bad.to_owned()]).unwrap_err();
        assert!(err.starts_with("upstream-sim: "), "{bad}: {err}");
    }
    assert!(reply(&SimConfig::default(), "m", &ask("[task:t]"), true).is_err());
}

#[test]
fn whole_word_containment() {
    assert!(contains_token("Final answer: 42", "42"));
    assert!(contains_token(r#"{"answer":"42"}"#, "42"));
    assert!(contains_token("42", "42"));
    assert!(contains_token("it is -5.", "-5"));
    assert!(!contains_token("Final answer: 142", "42"));
    assert!(!contains_token("Final answer: 420", "42"));
    assert!(!contains_token("Parisian", "Paris"));
    assert!(!contains_token("paris", "Paris"));
    assert!(!contains_token("anything", ""));
    // A needle ending in a non-word character needs no boundary on that side.
    assert!(contains_token("x-5y", "-5y"));
    assert!(contains_token("é42é", "é42é"));
    assert!(!contains_token("é42é", "42"));
}

#[test]
fn hash_is_pinned() {
    // Outcomes must not change between versions, runs or platforms: a test or a
    // benchmark result names a seed and expects the same items right and wrong.
    // The value was checked against an independent implementation of `mix`.
    let m = Marker { task: "arith", item: "q1", answer: "", tool: None };
    assert_eq!(mix(0, Role::Answer, "sim-small", &m), 0xc7d5_68fd_fc19_6ae9);
    assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    let d = draw(7, Role::Judge, "judge", &m);
    assert!((0.0..1.0).contains(&d));
}

#[test]
fn correct_share_is_binomial() {
    const N: usize = 2_000;
    for (seed, p) in [(0, 0.7), (1, 0.1), (2, 0.5), (3, 0.95), (u64::MAX, 0.3)] {
        let c = config(seed, vec![TaskScript::new("m", "t", p)]);
        let hits = (0..N).filter(|i| c.answers_correctly("m", "t", &format!("item-{i}"))).count();
        assert_binomial(hits, N, p);
    }
    let never = config(0, vec![TaskScript::new("*", "*", 0.0)]);
    let always = config(0, vec![TaskScript::new("*", "*", 1.0)]);
    assert!((0..N).all(|i| !never.answers_correctly("m", "t", &i.to_string())));
    assert!((0..N).all(|i| always.answers_correctly("m", "t", &i.to_string())));
}

#[test]
fn seeds_models_and_tasks_draw_independently() {
    const N: usize = 2_000;
    let outcomes = |c: &SimConfig, model: &str, task: &str| -> Vec<bool> {
        (0..N).map(|i| c.answers_correctly(model, task, &i.to_string())).collect()
    };
    let scripts = vec![TaskScript::new("*", "*", 0.5)];
    let a = outcomes(&config(1, scripts.clone()), "m", "t");
    assert_eq!(a, outcomes(&config(1, scripts.clone()), "m", "t"), "same seed, same outcomes");
    // Two independent fair draws differ on half the items.
    for b in [
        outcomes(&config(2, scripts.clone()), "m", "t"),
        outcomes(&config(1, scripts.clone()), "m2", "t"),
        outcomes(&config(1, scripts.clone()), "m", "t2"),
    ] {
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_binomial(differ, N, 0.5);
    }
}

#[test]
fn first_fitting_script_decides() {
    let c = config(
        0,
        vec![
            TaskScript::new("a", "t", 0.0),
            TaskScript::new("a", "*", 1.0),
            TaskScript::new("*", "t", 0.0),
            TaskScript::judge("*", "*", 0.0),
        ],
    );
    assert!(!c.answers_correctly("a", "t", "1"));
    assert!(c.answers_correctly("a", "u", "1"));
    assert!(!c.answers_correctly("b", "t", "1"));
    // No answering script fits: correct. Judge scripts only judge.
    assert!(c.answers_correctly("b", "u", "1"));
    assert!(!c.judges_correctly("b", "u", "1"));
    assert!(config(0, Vec::new()).judges_correctly("b", "u", "1"));
}

#[test]
fn replies_follow_the_outcome() {
    let c = config(5, vec![TaskScript::new("m", "t", 0.5)]);
    let mut right = 0;
    for i in 0..200 {
        let item = i.to_string();
        let r = reply(&c, "m", &ask(&format!("Q {}", marker("t", &item, "42"))), true).unwrap().unwrap();
        assert!(!r.truncated);
        let correct = c.answers_correctly("m", "t", &item);
        assert_eq!(text_of(&r) == "Final answer: 42", correct, "{r:?}");
        if correct {
            right += 1;
        } else {
            let wrong: i64 = text_of(&r).strip_prefix("Final answer: ").unwrap().parse().unwrap();
            assert!(wrong != 42 && (42 - 999..=42 + 999).contains(&wrong));
        }
    }
    assert!(right > 0 && right < 200);
    // No script for this model: always right. No marker: not scripted.
    let r = reply(&c, "other", &ask(&marker("t", "1", "x")), true).unwrap().unwrap();
    assert_eq!(text_of(&r), "Final answer: x");
    assert_eq!(reply(&c, "m", &ask("plain question"), true).unwrap(), None);
}

#[test]
fn wrong_answers_differ_by_model_not_by_call() {
    const N: usize = 500;
    let wrong = |seed: u64, model: &str, item: &str, answer: &str| {
        let m = Marker { task: "t", item, answer, tool: None };
        wrong_answer(mix(seed, Role::Wrong, model, &m), answer)
    };
    for answer in ["42", "Paris", "B", "0", "-7", "3.14"] {
        let mut same = 0;
        for i in 0..N {
            let item = i.to_string();
            let a = wrong(0, "model-a", &item, answer);
            assert_eq!(a, wrong(0, "model-a", &item, answer), "one model, one wrong answer");
            assert_ne!(a, answer);
            assert!(!contains_token(&format!("{FINAL}{a}"), answer), "{a} contains {answer}");
            if let Ok(n) = answer.parse::<i64>() {
                let w: i64 =
                    a.parse().unwrap_or_else(|_| panic!("an integer answer's wrong answer is an integer: {a}"));
                assert!(n < 0 || w >= 0, "{answer} became {a}");
            }
            same += usize::from(a == wrong(0, "model-b", &item, answer));
        }
        // Integers have 1,998 wrong values, words 16 × 900: a few collisions at most.
        assert!(same <= 3, "{answer}: models agree on {same} of {N} wrong answers");
    }
}

fn form_of<'a>(ask: &'a Ask, marker_text: &str) -> Form<'a> {
    let texts = [marker_text.to_owned()];
    form(ask, &find_marker(&texts).unwrap().unwrap())
}

#[test]
fn forms() {
    let tools = || {
        vec![
            Tool { name: "lookup".to_owned(), answer: AnswerType::String },
            Tool { name: "submit".to_owned(), answer: AnswerType::Number },
        ]
    };
    let plain = "[task:t item:1 answer:7]";
    let wants = "[task:t item:1 answer:7 tool:submit]";
    let wants_missing = "[task:t item:1 answer:7 tool:nope]";
    let base = || Ask { tools: tools(), ..Ask::default() };
    let submit = |wanted| Form::Call { name: "submit", answer: AnswerType::Number, wanted };
    let lookup = Form::Call { name: "lookup", answer: AnswerType::String, wanted: false };

    assert_eq!(form_of(&base(), plain), Form::Text, "tools on offer are not called unasked");
    assert_eq!(form_of(&base(), wants), submit(true));
    assert_eq!(form_of(&base(), wants_missing), Form::Text);
    assert_eq!(form_of(&Ask { choice: Choice::Any, ..base() }, plain), lookup);
    assert_eq!(form_of(&Ask { choice: Choice::Any, ..base() }, wants), submit(true));
    assert_eq!(form_of(&Ask { choice: Choice::Named("submit".into()), ..base() }, plain), submit(false));
    assert_eq!(form_of(&Ask { choice: Choice::Named("lookup".into()), ..base() }, wants), lookup);
    assert_eq!(form_of(&Ask { choice: Choice::None, ..base() }, wants), Form::Text);
    assert_eq!(form_of(&Ask { after_tool_result: true, ..base() }, wants), Form::Text);
    let json = Ask { json: Some(AnswerType::String), ..base() };
    assert_eq!(form_of(&json, plain), Form::Json(AnswerType::String));
    assert_eq!(form_of(&json, wants), submit(true));
    assert_eq!(form_of(&Ask { choice: Choice::None, ..json }, wants), Form::Json(AnswerType::String));
}

#[test]
fn every_style_in_every_form() {
    use WrongStyle::*;
    let m = Marker { task: "t", item: "1", answer: "42", tool: None };
    let hash = 99;
    let w = wrong_answer(hash, "42");
    let text = |s: &str| Reply { body: Body::Text(s.to_owned()), truncated: false };
    let cut = |s: &str| Reply { body: Body::Text(s.to_owned()), truncated: true };
    let call = |args: Args, truncated| Reply { body: Body::Call { name: "f".to_owned(), args }, truncated };
    let plain = Form::Text;
    let json = Form::Json(AnswerType::String);
    let json_number = Form::Json(AnswerType::Number);
    let forced = Form::Call { name: "f", answer: AnswerType::String, wanted: false };
    let wanted = Form::Call { name: "f", answer: AnswerType::String, wanted: true };
    let wanted_number = Form::Call { name: "f", answer: AnswerType::Number, wanted: true };

    let cases: Vec<(&Form, Option<WrongStyle>, bool, Reply)> = vec![
        (&plain, None, true, text("Final answer: 42")),
        (&plain, Some(Answer), true, text(&format!("Final answer: {w}"))),
        (&plain, Some(InvalidJson), true, text(&format!("Final answer: {w}"))),
        (&plain, Some(Truncated), true, cut("Final an")),
        (&plain, Some(Empty), true, text("")),
        (&plain, Some(Refusal), true, text("I can't help with that.")),
        (&json, None, true, text(r#"{"answer":"42"}"#)),
        (&json_number, None, true, text(r#"{"answer":42}"#)),
        (&json, Some(Answer), true, text(&format!(r#"{{"answer":"{w}"}}"#))),
        (&json_number, Some(Answer), true, text(&format!(r#"{{"answer":{w}}}"#))),
        (&json, Some(Truncated), true, cut(r#"{"answe"#)),
        (&json, Some(InvalidJson), true, text(&format!("{{'answer': '{w}'}}"))),
        (&json, Some(Empty), true, text("")),
        (&json, Some(Refusal), true, text(REFUSAL)),
        (&forced, None, true, call(Args::Json(json!({"answer": "42"})), false)),
        (&forced, Some(Answer), true, call(Args::Json(json!({"answer": w})), false)),
        (&wanted, None, true, call(Args::Json(json!({"answer": "42"})), false)),
        (&wanted_number, None, true, call(Args::Json(json!({"answer": 42})), false)),
        (&wanted, Some(Answer), true, call(Args::Json(json!({"answer": 10_000 + hash % 90_000})), false)),
        (&wanted_number, Some(Answer), true, call(Args::Json(json!({"answer": w})), false)),
        (&wanted, Some(Truncated), true, call(Args::Raw(r#"{"answe"#.to_owned()), true)),
        (&wanted, Some(Truncated), false, call(Args::Json(json!({})), true)),
        (&forced, Some(InvalidJson), true, call(Args::Raw(format!("{{'answer': '{w}'}}")), false)),
        (&forced, Some(InvalidJson), false, text(&format!("{{'answer': '{w}'}}"))),
        (&wanted, Some(Empty), false, text("")),
        (&wanted, Some(Refusal), true, text(REFUSAL)),
    ];
    for (form, style, raw_args, want) in cases {
        assert_eq!(render(form, style, &m, hash, raw_args), want, "{form:?} {style:?} raw_args={raw_args}");
    }
    // Cut JSON and broken JSON do not parse.
    for broken in [r#"{"answe"#, &format!("{{'answer': '{w}'}}")] {
        assert!(serde_json::from_str::<Value>(broken).is_err());
    }
}

#[test]
fn answer_types_from_schemas() {
    let of = |v: Value| AnswerType::of(Some(&v));
    assert_eq!(of(json!({"properties": {"answer": {"type": "integer"}}})), AnswerType::Number);
    assert_eq!(of(json!({"properties": {"answer": {"type": "NUMBER"}}})), AnswerType::Number);
    assert_eq!(of(json!({"properties": {"answer": {"type": ["number", "null"]}}})), AnswerType::Number);
    assert_eq!(of(json!({"properties": {"answer": {"type": "string"}}})), AnswerType::String);
    assert_eq!(of(json!({"type": "object"})), AnswerType::String);
    assert_eq!(AnswerType::of(None), AnswerType::String);
    // A number where the answer is no number stays a string.
    assert_eq!(typed("B", AnswerType::Number), json!("B"));
    assert_eq!(typed("-2.5", AnswerType::Number), json!(-2.5));
}

fn judge_ask(answer: &str, candidate: &str) -> Ask {
    Ask {
        texts: vec![
            "You grade answers. [judge]".to_owned(),
            format!("Question [task:t item:1 answer:{answer}]\nANSWER TO GRADE: {candidate}"),
        ],
        ..Ask::default()
    }
}

#[test]
fn judge_verdicts() {
    let fair = SimConfig::default();
    let verdict = |a: &Ask| text_of(&reply(&fair, "judge", a, true).unwrap().unwrap()).to_owned();
    assert_eq!(verdict(&judge_ask("42", "Final answer: 42")), "VERDICT: PASS");
    assert_eq!(verdict(&judge_ask("42", r#"{"answer":"42"}"#)), "VERDICT: PASS");
    assert_eq!(verdict(&judge_ask("42", "Final answer: 142")), "VERDICT: FAIL");
    assert_eq!(verdict(&judge_ask("42", "")), "VERDICT: FAIL");
    // The grade is what follows the LAST `ANSWER TO GRADE:`, markers removed.
    let mut a = judge_ask("42", "Final answer: 42");
    a.texts.push("ANSWER TO GRADE: 17 [task:t item:1 answer:42] [judge]".to_owned());
    assert_eq!(verdict(&a), "VERDICT: FAIL");
    let mut a = judge_ask("42", "Final answer: 17");
    a.texts.push("ANSWER TO GRADE: 42 [judge]".to_owned());
    assert_eq!(verdict(&a), "VERDICT: PASS");
    // Judge requests ignore JSON mode and tools.
    let a = Ask { json: Some(AnswerType::String), choice: Choice::Any, ..judge_ask("42", "42") };
    assert_eq!(verdict(&a), "VERDICT: PASS");
    // Without a task marker, `[judge]` alone is not scripted.
    assert_eq!(reply(&fair, "judge", &ask("[judge] ANSWER TO GRADE: 42"), true).unwrap(), None);
}

#[test]
fn judge_error_rate_is_binomial() {
    const N: usize = 2_000;
    let p = 0.8;
    let c = config(11, vec![TaskScript::judge("judge", "t", p), TaskScript::new("*", "*", 0.0)]);
    let mut right = 0;
    for i in 0..N {
        let item = i.to_string();
        let truth = i % 2 == 0;
        let candidate = if truth { "Final answer: 42" } else { "Final answer: 41" };
        let mut a = judge_ask("42", candidate);
        a.texts[1] = a.texts[1].replace("item:1", &format!("item:{item}"));
        let said = text_of(&reply(&c, "judge", &a, true).unwrap().unwrap()) == "VERDICT: PASS";
        assert_eq!(said == truth, c.judges_correctly("judge", "t", &item));
        right += usize::from(said == truth);
    }
    assert_binomial(right, N, p);
    // The answering scripts (p = 0) do not apply to a judge's verdicts, and a
    // judge's verdicts are drawn apart from its answers.
    let judging: Vec<bool> = (0..N).map(|i| c.judges_correctly("judge", "t", &i.to_string())).collect();
    let c2 = config(11, vec![TaskScript::new("judge", "t", p)]);
    let answering: Vec<bool> = (0..N).map(|i| c2.answers_correctly("judge", "t", &i.to_string())).collect();
    let differ = judging.iter().zip(&answering).filter(|(x, y)| x != y).count();
    assert_binomial(differ, N, 2.0 * p * (1.0 - p));
}
