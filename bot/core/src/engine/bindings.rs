//! The effect functions a workflow calls (`ask`, `choose`, `share`, `escalate`, …): their
//! arguments checked, their results replayed, registered on the sandboxed engine.

use super::replay::*;
use super::*;

pub(super) fn json_to_dynamic(v: &serde_json::Value) -> Dynamic {
    match v {
        serde_json::Value::Null => Dynamic::UNIT,
        serde_json::Value::Bool(b) => Dynamic::from_bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Dynamic::from(s.clone()),
        serde_json::Value::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        serde_json::Value::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o {
                m.insert(k.as_str().into(), json_to_dynamic(v));
            }
            Dynamic::from_map(m)
        }
    }
}

pub(super) fn case_to_dynamic(c: &CaseFields) -> Dynamic {
    let mut m = Map::new();
    m.insert("id".into(), Dynamic::from(c.id.clone()));
    m.insert("subject".into(), Dynamic::from(c.subject.clone()));
    m.insert("category".into(), Dynamic::from(c.category.clone()));
    m.insert("risk".into(), Dynamic::from(c.risk.clone()));
    Dynamic::from_map(m)
}

/// A case argument: the map `open_case` returned, or its id.
pub(super) fn case_id_of(case: &Dynamic, what: &str, pos: Position) -> RhaiResult<String> {
    if let Some(s) = case.clone().try_cast::<ImmutableString>() {
        return Ok(s.to_string());
    }
    if let Some(m) = case.read_lock::<Map>()
        && let Some(id) = m.get("id").and_then(|v| v.clone().try_cast::<ImmutableString>())
    {
        return Ok(id.to_string());
    }
    Err(script_error(format!("{what}: expected a case (what open_case returned) or a case id"), pos))
}

pub(super) fn map_str(m: &Map, key: &str) -> Option<String> {
    m.get(key).map(|v| if v.is_string() { v.clone().into_string().unwrap_or_default() } else { v.to_string() })
}

pub(super) fn check_person(r: &Replay<'_>, who: &str, what: &str, pos: Position) -> RhaiResult<()> {
    if r.host.person_exists(who) {
        Ok(())
    } else {
        Err(script_error(format!("{what}: nobody with id `{who}` is in the directory"), pos))
    }
}

pub(super) fn check_group(r: &Replay<'_>, group: &str, what: &str, pos: Position) -> RhaiResult<()> {
    if r.host.group_exists(group) {
        Ok(())
    } else {
        Err(script_error(format!("{what}: no group with id `{group}` is in the directory"), pos))
    }
}

pub(super) fn check_text(text: &str, what: &str, pos: Position) -> RhaiResult<()> {
    if text.trim().is_empty() {
        return Err(script_error(format!("{what}: the text is empty"), pos));
    }
    Ok(())
}

pub(super) fn ask_impl(
    ctx: &NativeCallContext,
    who: &str,
    prompt: &str,
    spec: AnswerSpec,
    kind: EffectKind,
) -> RhaiResult<Dynamic> {
    let pos = ctx.call_position();
    let name = kind.as_str();
    if let Some(choices) = &spec.choices
        && choices.is_empty()
    {
        return Err(script_error(format!("{name}: the list of choices is empty"), pos));
    }
    check_text(prompt, name, pos)?;
    let args = serde_json::json!({ "person": who, "prompt": prompt, "spec": spec });
    let v = with_replay(pos, |r| {
        check_person(r, who, name, pos)?;
        let wait =
            |step| Wait::Answer { step, person: who.to_string(), prompt: prompt.to_string(), spec: spec.clone() };
        r.effect(kind, args, pos, Some(&wait), |r, step| {
            // Checked when first asked, not on every replay: compiling a pattern is costly.
            if let Some(p) = &spec.pattern
                && let Err(e) = text::answer_pattern(p)
            {
                return Err(script_error(format!("{name}: the pattern is not a valid regular expression: {e}"), pos));
            }
            r.effects.push(Effect::Ask {
                step,
                person: who.to_string(),
                prompt: prompt.to_string(),
                spec: spec.clone(),
            });
            Ok(serde_json::Value::Null)
        })
    })?;
    Ok(json_to_dynamic(&v))
}

pub(super) fn spec_from_map(opts: &Map, pos: Position) -> RhaiResult<AnswerSpec> {
    let mut spec = AnswerSpec::default();
    for (k, v) in opts {
        match k.as_str() {
            "pattern" => spec.pattern = Some(v.to_string()),
            "hint" => spec.hint = Some(v.to_string()),
            "max_chars" => {
                let n = v.as_int().map_err(|_| script_error("ask: max_chars must be a number", pos))?;
                if n < 1 {
                    return Err(script_error("ask: max_chars must be at least 1", pos));
                }
                spec.max_chars = Some(n as usize);
            }
            other => {
                return Err(script_error(
                    format!("ask: unknown option `{other}`; the options are pattern, hint and max_chars"),
                    pos,
                ));
            }
        }
    }
    Ok(spec)
}

pub(super) fn strings_of(a: &Array, what: &str, pos: Position) -> RhaiResult<Vec<String>> {
    a.iter()
        .map(|v| {
            if v.is_string() {
                Ok(v.to_string())
            } else {
                Err(script_error(format!("{what}: every choice must be a string"), pos))
            }
        })
        .collect()
}

/// Refuses a field of `map` not in `allowed`: "`what`: unknown field `k`; `takes`".
pub(super) fn only_fields(map: &Map, allowed: &[&str], what: &str, takes: &str, pos: Position) -> RhaiResult<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(script_error(format!("{what}: unknown field `{k}`; {takes}"), pos)),
        None => Ok(()),
    }
}

pub(super) fn register_effects(engine: &mut Engine) {
    engine.register_fn("ask", |ctx: NativeCallContext, who: &str, prompt: &str| {
        ask_impl(&ctx, who, prompt, AnswerSpec::default(), EffectKind::Ask)
    });
    engine.register_fn("ask", |ctx: NativeCallContext, who: &str, prompt: &str, opts: Map| {
        let spec = spec_from_map(&opts, ctx.call_position())?;
        ask_impl(&ctx, who, prompt, spec, EffectKind::Ask)
    });
    engine.register_fn("choose", |ctx: NativeCallContext, who: &str, prompt: &str, options: Array| {
        let choices = strings_of(&options, "choose", ctx.call_position())?;
        let spec = AnswerSpec { choices: Some(choices), ..AnswerSpec::default() };
        ask_impl(&ctx, who, prompt, spec, EffectKind::Choose)
    });
    engine.register_fn("tell", |ctx: NativeCallContext, who: &str, text: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        check_text(text, "tell", pos)?;
        with_replay(pos, |r| {
            check_person(r, who, "tell", pos)?;
            let args = serde_json::json!({ "person": who, "text": text });
            r.effect(EffectKind::Tell, args, pos, None, |r, step| {
                r.effects.push(Effect::Tell { step, person: who.into(), text: text.into() });
                Ok(DONE)
            })
        })?;
        Ok(())
    });
    engine.register_fn("send", |ctx: NativeCallContext, group: &str, text: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        check_text(text, "send", pos)?;
        with_replay(pos, |r| {
            check_group(r, group, "send", pos)?;
            let args = serde_json::json!({ "group": group, "text": text });
            r.effect(EffectKind::Send, args, pos, None, |r, step| {
                r.effects.push(Effect::Send { step, group: group.into(), text: text.into() });
                Ok(DONE)
            })
        })?;
        Ok(())
    });
    engine.register_fn(
        "share",
        |ctx: NativeCallContext, group: &str, case: Dynamic, text: &str, why: Map| -> RhaiResult<()> {
            let pos = ctx.call_position();
            let case_id = case_id_of(&case, "share", pos)?;
            check_text(text, "share", pos)?;
            let purpose = map_str(&why, "purpose").filter(|s| !s.trim().is_empty());
            let basis = map_str(&why, "basis").filter(|s| !s.trim().is_empty());
            let consent = map_str(&why, "consent");
            only_fields(&why, &["purpose", "basis", "consent"], "share", "a share takes purpose, basis and consent", pos)?;
            let (Some(purpose), Some(basis)) = (purpose, basis) else {
                return Err(script_error(
                    "share: every share needs a purpose and a lawful basis, e.g. #{ purpose: \"protect a child from harm\", basis: \"public task\" }",
                    pos,
                ));
            };
            with_replay(pos, |r| {
                check_group(r, group, "share", pos)?;
                let args = serde_json::json!({ "group": group, "case": case_id, "text": text, "purpose": purpose, "basis": basis, "consent": consent });
                r.effect(EffectKind::Share, args, pos, None, |r, step| {
                    r.effects.push(Effect::Share {
                        step,
                        group: group.into(),
                        case_id: case_id.clone(),
                        text: text.into(),
                        purpose: purpose.clone(),
                        basis: basis.clone(),
                        consent: consent.clone(),
                    });
                    Ok(DONE)
                })
            })?;
            Ok(())
        },
    );
    engine.register_fn(
        "decline_share",
        |ctx: NativeCallContext, group: &str, case: Dynamic, why: Map| -> RhaiResult<()> {
            let pos = ctx.call_position();
            let case_id = case_id_of(&case, "decline_share", pos)?;
            only_fields(
                &why,
                &["reason", "consent"],
                "decline_share",
                "a decision not to share takes reason and consent",
                pos,
            )?;
            let Some(reason) = map_str(&why, "reason").filter(|s| !s.trim().is_empty()) else {
                return Err(script_error(
                    "decline_share: every decision not to share needs its reason, e.g. #{ reason: \"no risk of harm; \
                     the family is supported by the school\" }",
                    pos,
                ));
            };
            let consent = map_str(&why, "consent");
            with_replay(pos, |r| {
                check_group(r, group, "decline_share", pos)?;
                let args = serde_json::json!({ "group": group, "case": case_id, "reason": reason, "consent": consent });
                r.effect(EffectKind::DeclineShare, args, pos, None, |r, step| {
                    r.effects.push(Effect::DeclineShare {
                        step,
                        group: group.into(),
                        case_id: case_id.clone(),
                        reason: reason.clone(),
                        consent: consent.clone(),
                    });
                    Ok(DONE)
                })
            })?;
            Ok(())
        },
    );
    engine.register_fn("open_case", |ctx: NativeCallContext, fields: Map| -> RhaiResult<Dynamic> {
        let pos = ctx.call_position();
        let get = |k: &str| -> RhaiResult<String> {
            map_str(&fields, k).filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                script_error(format!("open_case: `{k}` is missing; a case needs subject, category and risk"), pos)
            })
        };
        let (subject, category, risk) = (get("subject")?, get("category")?, get("risk")?);
        only_fields(
            &fields,
            &["subject", "category", "risk"],
            "open_case",
            "a case takes subject, category and risk",
            pos,
        )?;
        let args = serde_json::json!({ "subject": subject, "category": category, "risk": risk });
        let v = with_replay(pos, |r| {
            r.effect(EffectKind::OpenCase, args, pos, None, |r, step| {
                let case = CaseFields {
                    id: r.host.new_case_id(),
                    subject: subject.clone(),
                    category: category.clone(),
                    risk: risk.clone(),
                };
                let v = serde_json::to_value(&case).map_err(|e| script_error(e.to_string(), pos))?;
                r.effects.push(Effect::OpenCase { step, case });
                Ok(v)
            })
        })?;
        let case: CaseFields = serde_json::from_value(v).map_err(|e| script_error(format!("open_case: {e}"), pos))?;
        Ok(case_to_dynamic(&case))
    });
    engine.register_fn("close_case", |ctx: NativeCallContext, case: Dynamic, reason: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        let case_id = case_id_of(&case, "close_case", pos)?;
        check_text(reason, "close_case", pos)?;
        with_replay(pos, |r| {
            let args = serde_json::json!({ "case": case_id, "reason": reason });
            r.effect(EffectKind::CloseCase, args, pos, None, |r, step| {
                r.effects.push(Effect::CloseCase { step, case_id: case_id.clone(), reason: reason.into() });
                Ok(DONE)
            })
        })?;
        Ok(())
    });
    engine.register_fn("note", |ctx: NativeCallContext, case: Dynamic, text: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        let case_id = case_id_of(&case, "note", pos)?;
        check_text(text, "note", pos)?;
        with_replay(pos, |r| {
            let args = serde_json::json!({ "case": case_id, "text": text });
            r.effect(EffectKind::Note, args, pos, None, |r, step| {
                r.effects.push(Effect::Note { step, case_id: case_id.clone(), text: text.into() });
                Ok(DONE)
            })
        })?;
        Ok(())
    });
    engine.register_fn("now", |ctx: NativeCallContext| -> RhaiResult<String> {
        let pos = ctx.call_position();
        let v = with_replay(pos, |r| {
            r.effect(EffectKind::Now, serde_json::Value::Null, pos, None, |r, _| Ok(serde_json::json!(r.host.now().0)))
        })?;
        Ok(Millis(v.as_i64().unwrap_or(0)).rfc3339())
    });
    engine.register_fn("sleep", |ctx: NativeCallContext, duration: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        let d = parse_duration(duration).map_err(|e| {
            script_error(format!("sleep: `{duration}` is not a duration ({e}); write e.g. \"15m\" or \"2h\""), pos)
        })?;
        if d > MAX_SLEEP {
            return Err(script_error("sleep: the longest wait is 5 years", pos));
        }
        with_replay(pos, |r| {
            let args = serde_json::json!({ "duration_ms": d.as_millis() as u64 });
            // The due time is fixed when the timer is first set, and kept in the history.
            let until = if r.position < r.history.len() { Millis(0) } else { r.host.now().plus(d) };
            let wait = move |step| Wait::Timer { step, until };
            r.effect(EffectKind::Sleep, args, pos, Some(&wait), |r, step| {
                r.effects.push(Effect::Sleep { step, until });
                Ok(serde_json::Value::Null)
            })
        })?;
        Ok(())
    });
}

pub(super) fn register_escalation(engine: &mut Engine) {
    engine.register_fn("escalate", |ctx: NativeCallContext, case: Dynamic, policy: &str| -> RhaiResult<String> {
        let pos = ctx.call_position();
        let case_id = case_id_of(&case, "escalate", pos)?;
        let v = with_replay(pos, |r| {
            let args = serde_json::json!({ "case": case_id, "policy": policy });
            r.effect(EffectKind::Escalate, args, pos, None, |r, step| {
                // Checked when the escalation starts, not on replay: a policy renamed since
                // must not break a run that escalated under the old name.
                if !r.host.policy_exists(policy) {
                    return Err(script_error(
                        format!(
                            "escalate: no policy `{policy}` in the configuration; add a [[policy]] with id = \"{policy}\""
                        ),
                        pos,
                    ));
                }
                let escalation_id = r.host.new_escalation_id();
                r.effects.push(Effect::Escalate {
                    step,
                    case_id: case_id.clone(),
                    policy: policy.to_string(),
                    escalation_id: escalation_id.clone(),
                });
                Ok(serde_json::json!(escalation_id))
            })
        })?;
        Ok(v.as_str().unwrap_or_default().to_string())
    });
    engine.register_fn(
        "wait_for_ack",
        |ctx: NativeCallContext, case: Dynamic, deadline: &str| -> RhaiResult<Dynamic> {
            let pos = ctx.call_position();
            let case_id = case_id_of(&case, "wait_for_ack", pos)?;
            let d = parse_duration(deadline).map_err(|e| {
                script_error(
                    format!("wait_for_ack: `{deadline}` is not a duration ({e}); write e.g. \"15m\" or \"2h\""),
                    pos,
                )
            })?;
            if d > MAX_SLEEP {
                return Err(script_error("wait_for_ack: the longest wait is 5 years", pos));
            }
            let v = with_replay(pos, |r| {
                let args = serde_json::json!({ "case": case_id, "deadline_ms": d.as_millis() as u64 });
                let until = if r.position < r.history.len() { Millis(0) } else { r.host.now().plus(d) };
                let id = case_id.clone();
                let wait = move |step| Wait::Ack { step, case_id: id.clone(), until };
                r.effect(EffectKind::WaitForAck, args, pos, Some(&wait), |r, step| {
                    r.effects.push(Effect::WaitForAck { step, case_id: case_id.clone(), until });
                    Ok(serde_json::Value::Null)
                })
            })?;
            // `#{ by: "bea", at: "2026-…" }`, or `()` when the deadline came first.
            Ok(match v.get("by").and_then(|b| b.as_str()) {
                Some(by) => {
                    let mut m = Map::new();
                    m.insert("by".into(), Dynamic::from(by.to_string()));
                    let at = Millis(v.get("at").and_then(|a| a.as_i64()).unwrap_or(0));
                    m.insert("at".into(), Dynamic::from(at.rfc3339()));
                    Dynamic::from_map(m)
                }
                None => Dynamic::UNIT,
            })
        },
    );
    engine.register_fn("open_cases", |ctx: NativeCallContext, group: &str| -> RhaiResult<Dynamic> {
        let pos = ctx.call_position();
        let v = with_replay(pos, |r| {
            check_group(r, group, "open_cases", pos)?;
            let args = serde_json::json!({ "group": group });
            let query = Query::OpenCases { group: group.to_string() };
            let wait = move |step| Wait::Query { step, query: query.clone() };
            r.effect(EffectKind::OpenCases, args, pos, Some(&wait), |_, _| Ok(serde_json::Value::Null))
        })?;
        Ok(json_to_dynamic(&v))
    });
    engine.register_fn("members", |ctx: NativeCallContext, group: &str, role: &str| -> RhaiResult<Dynamic> {
        let pos = ctx.call_position();
        let v = with_replay(pos, |r| {
            check_group(r, group, "members", pos)?;
            if !role.is_empty() && !r.host.role_exists(role) {
                return Err(script_error(
                    format!("members: no role `{role}` in the configuration; use a [[role]] id, or \"\" for everyone"),
                    pos,
                ));
            }
            let args = serde_json::json!({ "group": group, "role": role });
            r.effect(EffectKind::Members, args, pos, None, |r, _| Ok(serde_json::json!(r.host.members(group, role))))
        })?;
        Ok(json_to_dynamic(&v))
    });
    engine.register_fn("sleep_until", |ctx: NativeCallContext, time: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        let Some(at) = Millis::parse_rfc3339(time.trim()) else {
            return Err(script_error(
                format!("sleep_until: `{time}` is not a time; write it like \"2026-11-30T09:00:00Z\""),
                pos,
            ));
        };
        with_replay(pos, |r| {
            let args = serde_json::json!({ "until": at.0 });
            let wait = move |step| Wait::Timer { step, until: at };
            r.effect(EffectKind::SleepUntil, args, pos, Some(&wait), |r, step| {
                r.effects.push(Effect::Sleep { step, until: at });
                Ok(serde_json::Value::Null)
            })
        })?;
        Ok(())
    });
}
