//! Writes the limits of [`cove_api::rules`] into the OpenAPI document, so a client generated
//! from it (or a person reading it) knows every range and pattern the checks enforce.

use cove_api::rules::{self, Rule};
use utoipa::Number;
use utoipa::openapi::schema::{AdditionalProperties, Object, Schema};
use utoipa::openapi::{OpenApi, RefOr};

/// Applies every field and parameter rule to `doc`. Panics when a rule names a schema or a
/// field the document does not have (a rename that left the table behind): coved's tests
/// build the document, so that cannot ship.
pub(crate) fn publish(doc: &mut OpenApi) {
    let schemas = &mut doc.components.get_or_insert_default().schemas;
    for &(schema, field, rule) in rules::FIELDS {
        let Some(RefOr::T(Schema::Object(obj))) = schemas.get_mut(schema) else {
            panic!("rules::FIELDS names {schema}, which the document has not as an object");
        };
        let Some(RefOr::T(prop)) = obj.properties.get_mut(field) else {
            panic!("rules::FIELDS names {schema}.{field}, which the document does not have");
        };
        apply(prop, rule, &format!("{schema}.{field}"));
    }
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            for p in op.parameters.iter_mut().flatten() {
                let RefOr::T(p) = p else { continue };
                if let Some(&(_, rule)) = rules::PARAMS.iter().find(|(n, _)| *n == p.name)
                    && let Some(RefOr::T(schema)) = &mut p.schema
                {
                    apply(schema, rule, &p.name);
                }
            }
        }
    }
}

fn apply(schema: &mut Schema, rule: Rule, at: &str) {
    let wrong = || panic!("{at}: the rule {rule:?} does not fit its schema");
    match (schema, rule) {
        (Schema::Object(o), Rule::Int(r)) => {
            o.minimum = Some(Number::UInt(usize::try_from(r.min).unwrap_or(usize::MAX)));
            o.maximum = Some(Number::UInt(usize::try_from(r.max).unwrap_or(usize::MAX)));
        }
        (Schema::Object(o), Rule::Seconds(max)) => {
            o.minimum = None;
            o.exclusive_minimum = Some(Number::Float(0.0));
            o.maximum = Some(Number::Float(max));
        }
        (Schema::Object(o), Rule::Text(p)) => o.pattern = Some(p.regex.into()),
        (Schema::Object(o), Rule::Map { max, keys, values }) => {
            o.max_properties = max;
            let mut names = Object::new();
            names.pattern = Some(keys.regex.into());
            o.property_names = Some(Box::new(Schema::Object(names)));
            match o.additional_properties.as_deref_mut() {
                Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(v)))) => {
                    v.pattern = Some(values.regex.into());
                }
                _ => wrong(),
            }
        }
        (Schema::Array(a), Rule::Items(n)) => a.max_items = Some(n),
        _ => wrong(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cove_api::limits;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::to_value(super::super::routes().1).unwrap()
    }

    /// The schema names `v` refers to, anywhere inside it.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.trim_start_matches("#/components/schemas/").to_string());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    fn is_number(p: &Value) -> bool {
        let t = &p["type"];
        ["integer", "number"]
            .iter()
            .any(|n| t == n || t.as_array().is_some_and(|a| a.iter().any(|x| x == n)))
    }

    #[test]
    fn every_number_a_request_sends_is_bounded_in_the_document() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        // Every schema a request body names, and every schema those name.
        let mut todo = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                refs(&op["requestBody"], &mut todo);
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] == "query" && is_number(&p["schema"]) {
                        assert!(
                            p["schema"].get("maximum").is_some(),
                            "query parameter {} has no bounds in the document",
                            p["name"]
                        );
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let schema = &schemas[&name];
            refs(schema, &mut todo);
            for (field, p) in schema["properties"].as_object().into_iter().flatten() {
                if is_number(p) {
                    assert!(
                        p.get("maximum").is_some()
                            && (p.get("minimum").is_some() || p.get("exclusiveMinimum").is_some()),
                        "{name}.{field} is a number a request sends with no bounds: add it to \
                         cove_api::rules::FIELDS"
                    );
                }
            }
        }
        assert!(
            seen.contains("CreateSandbox") && seen.contains("TtySize"),
            "{seen:?}"
        );
    }

    #[test]
    fn the_document_carries_the_limits_the_checks_use() {
        let doc = doc();
        let create = &doc["components"]["schemas"]["CreateSandbox"]["properties"];
        assert_eq!(create["cpus"]["minimum"], limits::CPUS.min);
        assert_eq!(create["cpus"]["maximum"], limits::CPUS.max);
        assert_eq!(create["ttl_secs"]["maximum"], limits::TIMEOUT_SECS.max);
        assert_eq!(create["name"]["pattern"], limits::NAME.regex);
        assert_eq!(create["labels"]["maxProperties"], limits::MAX_LABELS);
        assert_eq!(
            create["labels"]["propertyNames"]["pattern"],
            limits::LABEL_KEY.regex
        );
        assert_eq!(
            create["labels"]["additionalProperties"]["pattern"],
            limits::LABEL_VALUE.regex
        );
        assert_eq!(
            create["env"]["propertyNames"]["pattern"],
            limits::ENV_NAME.regex
        );
        let exec = &doc["components"]["schemas"]["Exec"]["properties"];
        assert_eq!(exec["timeout_secs"]["exclusiveMinimum"], 0.0);
        assert_eq!(
            exec["timeout_secs"]["maximum"],
            limits::EXEC_TIMEOUT_SECS_MAX
        );
        let list = doc["paths"]["/v1/sandboxes"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(list["schema"]["maximum"], limits::PAGE_LIMIT.max);
        // Enumerations are closed: an unknown value is refused, and the document lists them.
        let on_idle = &doc["components"]["schemas"]["OnIdle"]["enum"];
        assert_eq!(on_idle, &serde_json::json!(["pause", "hibernate"]));
        let engine = &doc["components"]["schemas"]["Engine"]["enum"];
        assert_eq!(engine, &serde_json::json!(["auto", "kvm", "qemu"]));
    }
}
