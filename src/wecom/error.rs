//! WeCom errcodes: how the client reacts to each (always by errcode, never by errmsg), and the
//! words an operator can act on.

/// What the client does about an errcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 0: delivered (possibly partially).
    Ok,
    /// The token is invalid, expired or missing: drop it, fetch a new one, retry once.
    RefreshToken,
    /// WeCom is busy (-1): back off and retry.
    Busy,
    /// A frequency or concurrency limit: pause the app and retry within the budget.
    RateLimited,
    /// Retrying cannot help: configuration, recipients, content or permission.
    Permanent,
}

/// Classifies an errcode. Unknown codes are permanent: retrying what we do not understand
/// risks hammering WeCom for nothing.
pub fn classify(errcode: i64) -> ErrorClass {
    match errcode {
        0 => ErrorClass::Ok,
        40014 | 42001 | 41001 => ErrorClass::RefreshToken,
        -1 => ErrorClass::Busy,
        45009 | 45033 => ErrorClass::RateLimited,
        _ => ErrorClass::Permanent,
    }
}

/// What an operator should do about an errcode, when we know.
pub fn advice(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        -1 => "WeCom is busy; the send is retried with back-off",
        40001 => {
            "the app's secret is wrong, or the app is disabled: copy the Secret again from 应用管理 → the app, and check that the app is enabled"
        }
        40013 => "the corp_id is wrong: copy it from 我的企业 → 企业信息",
        40014 | 42001 | 41001 => {
            "the access token was invalid or expired; a new one is fetched automatically"
        }
        40003 | 81013 => {
            "no valid recipient: check the user ids, party ids and tags in `to`, and that they are in the app's visible range (可见范围)"
        }
        40056 => {
            "the agent_id does not belong to this corp or secret: check agent_id against the app's AgentId"
        }
        44004 => "the message text is empty",
        45002 => "the message is longer than WeCom allows",
        45009 => "WeCom's frequency limit was hit; sends of this app pause for a minute",
        45033 => "WeCom's concurrency limit was hit; sends are retried with back-off",
        48002 => "the app has no permission for this API: enable it in the app's settings",
        60020 => {
            "this host's IP is not trusted: add it under 应用管理 → the app → 企业可信IP (trusted IPs); the errmsg shows the IP WeCom saw ('from ip')"
        }
        82001 => {
            "some recipients are outside the app's visible range (可见范围): widen the range or fix `to`"
        }
        301002 => "the app may not send to these recipients: check the app's visible range",
        _ => return None,
    })
}

/// "errcode 60020 (not allow to access from your ip...): this host's IP is not trusted: ..."
pub fn describe(errcode: i64, errmsg: &str) -> String {
    match advice(errcode) {
        Some(advice) => format!("errcode {errcode} ({errmsg}): {advice}"),
        None => format!("errcode {errcode} ({errmsg})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_design_table() {
        for code in [40014, 42001, 41001] {
            assert_eq!(classify(code), ErrorClass::RefreshToken);
        }
        assert_eq!(classify(-1), ErrorClass::Busy);
        assert_eq!(classify(45009), ErrorClass::RateLimited);
        assert_eq!(classify(45033), ErrorClass::RateLimited);
        for code in [
            40001, 40013, 60020, 81013, 82001, 40003, 40056, 44004, 45002, 48002, 301002, 12345,
        ] {
            assert_eq!(classify(code), ErrorClass::Permanent, "{code}");
        }
        assert!(describe(60020, "not allow").contains("企业可信IP"));
        assert!(describe(40001, "invalid credential").contains("secret is wrong"));
    }
}
