//! The simulator's inventory and the APIs around it that are not sessions: the managed
//! instances `DescribeInstanceInformation` lists (with tags, ping status and agent version),
//! EC2 Instance Connect's `SendSSHPublicKey` with its 60 s key validity, and STS
//! `GetCallerIdentity`. The session side lives in `service`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::error::ApiError;

/// How long EC2 Instance Connect keeps a pushed key (the real service: 60 s).
pub const EIC_VALIDITY: Duration = Duration::from_secs(60);

/// The identity `GetCallerIdentity` reports.
pub const CALLER_ARN: &str = "arn:aws:iam::123456789012:user/sim";

/// One managed node of the simulated fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimInstance {
    /// `i-…` (EC2) or `mi-…` (hybrid managed node).
    pub id: String,
    /// Value of the `Name` tag (also the computer name).
    pub name: String,
    /// All tags, `Name` included.
    pub tags: Vec<(String, String)>,
    /// Whether the agent is connected (`Online`) or not (`ConnectionLost`).
    pub online: bool,
    /// Agent version reported by DescribeInstanceInformation.
    pub agent_version: String,
    /// `Linux`, `Windows` or `MacOS`.
    pub platform: String,
}

impl SimInstance {
    /// An online Linux instance with a `Name` tag.
    pub fn new(id: &str, name: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            tags: vec![("Name".to_owned(), name.to_owned())],
            online: true,
            agent_version: super::AGENT_VERSION.to_owned(),
            platform: "Linux".to_owned(),
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Marks the agent as not connected.
    pub fn offline(mut self) -> Self {
        self.online = false;
        self
    }

    /// Parses the `ssm-proxy sim --instance` syntax:
    /// `ID[,name=NAME][,TAG=VALUE...][,offline][,agent=VERSION][,platform=P]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(',');
        let id = parts.next().unwrap_or_default().trim();
        if !(id.starts_with("i-") || id.starts_with("mi-")) {
            return Err(format!("{spec:?} does not start with an i-… or mi-… id"));
        }
        let mut inst = Self::new(id, id);
        inst.tags.clear();
        for part in parts {
            match part.split_once('=') {
                None if part == "offline" => inst.online = false,
                Some(("name", v)) => inst.name = v.to_owned(),
                Some(("agent", v)) => inst.agent_version = v.to_owned(),
                Some(("platform", v)) => inst.platform = v.to_owned(),
                Some((k, v)) if !k.is_empty() => inst.tags.push((k.to_owned(), v.to_owned())),
                _ => {
                    return Err(format!(
                        "{part:?} in {spec:?} is not KEY=VALUE or `offline`"
                    ));
                }
            }
        }
        inst.tags.insert(0, ("Name".to_owned(), inst.name.clone()));
        Ok(inst)
    }

    fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn ping_status(&self) -> &'static str {
        if self.online {
            "Online"
        } else {
            "ConnectionLost"
        }
    }

    fn to_json(&self) -> Value {
        let managed = self.id.starts_with("mi-");
        let mut v = json!({
            "InstanceId": self.id,
            "PingStatus": self.ping_status(),
            "LastPingDateTime": unix_secs(),
            "AgentVersion": self.agent_version,
            "IsLatestVersion": false,
            "PlatformType": self.platform,
            "PlatformName": if self.platform == "Linux" { "Amazon Linux" } else { self.platform.as_str() },
            "PlatformVersion": "2023",
            "ResourceType": if managed { "ManagedInstance" } else { "EC2Instance" },
            "ComputerName": self.name,
            "IPAddress": "127.0.0.1",
        });
        // Only hybrid nodes carry a Name in this API; EC2 instances have only their tags.
        if managed {
            v["Name"] = json!(self.name);
        }
        v
    }
}

/// The fleet a default simulator serves: `web-1` (the instance the tests use) and `db-1`.
pub fn default_fleet() -> Vec<SimInstance> {
    vec![
        SimInstance::new("i-0123456789abcdef0", "web-1")
            .tag("Role", "web")
            .tag("Env", "test"),
        SimInstance::new("i-0fedcba9876543210", "db-1")
            .tag("Role", "db")
            .tag("Env", "test"),
    ]
}

fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs() as f64)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `DescribeInstanceInformation`: `Filters` (`tag:KEY`, `tag-key`, `InstanceIds`, `PingStatus`,
/// `PlatformTypes`, `ResourceType`), `InstanceInformationFilterList` (`InstanceIds`,
/// `PingStatus`, `PlatformTypes`), `MaxResults` and `NextToken` (an index).
pub fn describe(fleet: &[SimInstance], input: &Value) -> Result<Value, ApiError> {
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    for f in input
        .get("Filters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = f.get("Key").and_then(Value::as_str).unwrap_or_default();
        filters.push((key.to_owned(), strings(f.get("Values"))));
    }
    for f in input
        .get("InstanceInformationFilterList")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = f.get("key").and_then(Value::as_str).unwrap_or_default();
        filters.push((key.to_owned(), strings(f.get("valueSet"))));
    }
    for (key, values) in &filters {
        let known = key.starts_with("tag:")
            || [
                "tag-key",
                "InstanceIds",
                "PingStatus",
                "PlatformTypes",
                "ResourceType",
            ]
            .contains(&key.as_str());
        if !known || values.is_empty() {
            return Err(ApiError::client(
                "InvalidFilterKey",
                format!("The filter key {key} is not valid or has no values"),
            ));
        }
    }
    let matches = |i: &SimInstance| {
        filters.iter().all(|(key, values)| {
            let has = |v: &str| values.iter().any(|x| x == v);
            match key.as_str() {
                "tag-key" => i.tags.iter().any(|(k, _)| has(k)),
                "InstanceIds" => has(&i.id),
                "PingStatus" => has(i.ping_status()),
                "PlatformTypes" => has(&i.platform),
                "ResourceType" => has(if i.id.starts_with("mi-") {
                    "ManagedInstance"
                } else {
                    "EC2Instance"
                }),
                tag => tag
                    .strip_prefix("tag:")
                    .and_then(|k| i.tag_value(k))
                    .is_some_and(has),
            }
        })
    };
    let all: Vec<&SimInstance> = fleet.iter().filter(|i| matches(i)).collect();
    let start: usize = input
        .get("NextToken")
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let max = input
        .get("MaxResults")
        .and_then(Value::as_u64)
        .map_or(50, |m| m.clamp(1, 50) as usize);
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(max)
        .map(|i| i.to_json())
        .collect();
    let mut out = json!({ "InstanceInformationList": page });
    if start + max < all.len() {
        out["NextToken"] = json!((start + max).to_string());
    }
    Ok(out)
}

/// A key pushed through `SendSSHPublicKey`.
#[derive(Debug, Clone)]
struct PushedKey {
    instance: String,
    user: String,
    key: String,
    at: Instant,
}

/// Keys pushed through EC2 Instance Connect, each valid for a limited time.
#[derive(Debug)]
pub struct EicKeys {
    validity: Duration,
    keys: Mutex<Vec<PushedKey>>,
}

impl EicKeys {
    /// A store whose keys expire after `validity`.
    pub fn new(validity: Duration) -> Self {
        Self {
            validity,
            keys: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PushedKey>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `SendSSHPublicKey` (AWS JSON 1.1, `AWSEC2InstanceConnectService.SendSSHPublicKey`).
    pub fn send(
        &self,
        fleet: &[SimInstance],
        denied: &[String],
        input: &Value,
    ) -> Result<Value, ApiError> {
        let field = |k: &str| input.get(k).and_then(Value::as_str).unwrap_or_default();
        let (instance, user, key) = (
            field("InstanceId"),
            field("InstanceOSUser"),
            field("SSHPublicKey"),
        );
        if denied.iter().any(|d| d == instance) {
            return Err(ApiError::client(
                "AccessDeniedException",
                format!(
                    "User: {CALLER_ARN} is not authorized to perform: \
                     ec2-instance-connect:SendSSHPublicKey on resource: \
                     arn:aws:ec2:us-east-1:123456789012:instance/{instance}"
                ),
            ));
        }
        let Some(inst) = fleet.iter().find(|i| i.id == instance) else {
            return Err(ApiError::client(
                "EC2InstanceNotFoundException",
                format!("Instance not found: {instance}"),
            ));
        };
        if !inst.online {
            return Err(ApiError::client(
                "EC2InstanceStateInvalidException",
                "Instance is not in a valid state for EC2 Instance Connect",
            ));
        }
        let kinds = ["ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-nistp"];
        if user.is_empty() || !kinds.iter().any(|k| key.starts_with(k)) {
            return Err(ApiError::client(
                "InvalidArgsException",
                "The SSH public key or OS user is not valid",
            ));
        }
        self.lock().push(PushedKey {
            instance: instance.to_owned(),
            user: user.to_owned(),
            key: key.trim().to_owned(),
            at: Instant::now(),
        });
        Ok(json!({"RequestId": uuid::Uuid::new_v4().to_string(), "Success": true}))
    }

    /// The keys pushed for `user` that are still valid, one per line: what an sshd
    /// `AuthorizedKeysCommand` prints.
    pub fn authorized_keys(&self, user: &str) -> String {
        let now = Instant::now();
        let mut keys = self.lock();
        keys.retain(|k| now.duration_since(k.at) < self.validity);
        keys.iter()
            .filter(|k| k.user == user)
            .map(|k| format!("{}\n", k.key))
            .collect()
    }

    /// How many keys were pushed for `instance` so far (expired ones included until pruned).
    pub fn pushed_for(&self, instance: &str) -> usize {
        self.lock()
            .iter()
            .filter(|k| k.instance == instance)
            .count()
    }
}

/// STS `GetCallerIdentity` (AWS query protocol: form body in, XML out).
pub fn caller_identity() -> String {
    format!(
        "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <GetCallerIdentityResult><Arn>{CALLER_ARN}</Arn><UserId>AIDASIMULATOR0000000</UserId>\
         <Account>123456789012</Account></GetCallerIdentityResult>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
         </GetCallerIdentityResponse>",
        uuid::Uuid::new_v4()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_filters_select_instances() {
        let fleet = default_fleet();
        let ids = |input: Value| -> Vec<String> {
            describe(&fleet, &input).expect("describe")["InstanceInformationList"]
                .as_array()
                .expect("list")
                .iter()
                .map(|i| i["InstanceId"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        assert_eq!(
            ids(json!({"Filters": [{"Key": "tag:Name", "Values": ["web-1"]}]})),
            ["i-0123456789abcdef0"]
        );
        assert_eq!(
            ids(json!({"Filters": [{"Key": "tag:Role", "Values": ["db"]}]})),
            ["i-0fedcba9876543210"]
        );
        assert_eq!(
            ids(json!({"Filters": [{"Key": "tag:Env", "Values": ["test"]}]})).len(),
            2
        );
        assert!(ids(json!({"Filters": [{"Key": "tag:Name", "Values": ["nope"]}]})).is_empty());
        assert!(
            describe(
                &fleet,
                &json!({"Filters": [{"Key": "bogus", "Values": ["x"]}]})
            )
            .is_err()
        );
    }

    #[test]
    fn pages_follow_next_token() {
        let fleet: Vec<SimInstance> = (0..7)
            .map(|n| SimInstance::new(&format!("i-{n:017x}"), "same"))
            .collect();
        let mut token: Option<String> = None;
        let mut seen = 0;
        loop {
            let mut input = json!({"MaxResults": 5});
            if let Some(t) = &token {
                input["NextToken"] = json!(t);
            }
            let out = describe(&fleet, &input).expect("describe");
            seen += out["InstanceInformationList"]
                .as_array()
                .map_or(0, Vec::len);
            match out.get("NextToken").and_then(Value::as_str) {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, 7);
    }

    #[test]
    fn eic_keys_expire() {
        let fleet = default_fleet();
        let keys = EicKeys::new(Duration::ZERO);
        let push = json!({"InstanceId": "i-0123456789abcdef0", "InstanceOSUser": "root",
                          "SSHPublicKey": "ssh-ed25519 AAAA test"});
        keys.send(&fleet, &[], &push).expect("push");
        assert_eq!(keys.authorized_keys("root"), "");
        let keys = EicKeys::new(EIC_VALIDITY);
        keys.send(&fleet, &[], &push).expect("push");
        assert_eq!(keys.authorized_keys("root"), "ssh-ed25519 AAAA test\n");
        assert_eq!(keys.authorized_keys("other"), "");
        let bad = json!({"InstanceId": "i-0123456789abcdef0", "InstanceOSUser": "root",
                         "SSHPublicKey": "not a key"});
        assert!(keys.send(&fleet, &[], &bad).is_err());
        let unknown = json!({"InstanceId": "i-00000000000000000", "InstanceOSUser": "root",
                             "SSHPublicKey": "ssh-ed25519 AAAA"});
        assert!(keys.send(&fleet, &[], &unknown).is_err());
    }

    #[test]
    fn parses_cli_instances() {
        let i = SimInstance::parse("i-0aaaaaaaaaaaaaaaa,name=web-2,Role=web,offline").expect("ok");
        assert_eq!(i.name, "web-2");
        assert!(!i.online);
        assert_eq!(i.tag_value("Name"), Some("web-2"));
        assert_eq!(i.tag_value("Role"), Some("web"));
        assert!(SimInstance::parse("web-2").is_err());
    }
}
