<?php
// How people sign in, applied through Moodle's own APIs on every rollout (idempotent): the
// auth plugins enabled, auth_ldap's settings and its sync task, OAuth2 issuers, MFA for
// site admins. Reads the kit's rendered settings (signin.json, no secrets) and the secret
// files it names. Prints "kit: changed: ..." or "kit: ok" (Ansible reports changes by it).
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';
require_once($CFG->libdir . '/adminlib.php');

$file = getenv('KIT_SIGNIN_FILE') ?: '/etc/moodle-kit/signin.json';
if (!is_readable($file)) {
    echo "kit: ok (no sign-in settings at $file)\n";
    exit(0);
}
$want = json_decode(file_get_contents($file), true, 32, JSON_THROW_ON_ERROR);
$changes = [];

function kit_set(string $name, $value, ?string $plugin, array &$changes, string $label): void {
    if ((string) get_config($plugin ?? 'core', $name) !== (string) $value) {
        set_config($name, $value, $plugin);
        $changes[] = $label;
    }
}

\core\cron::setup_user();   // the admin: issuers are created under moodle/site:config

// --- auth plugins: the kit manages ldap and oauth2; others an admin enabled stay on ---
$managed = ['ldap', 'oauth2'];
$current = array_filter(explode(',', (string) get_config('core', 'auth')));
$kept = array_values(array_filter($current, fn($a) => !in_array($a, $managed, true)));
$enabled = implode(',', array_merge($want['enabled'], $kept));
if (implode(',', $current) !== $enabled) {
    set_config('auth', $enabled);
    \core\session\manager::gc();
    core_plugin_manager::reset_caches();
    $changes[] = "auth plugins: $enabled";
}

// --- LDAP ---
if (!empty($want['ldap'])) {
    foreach ($want['ldap']['config'] as $name => $value) {
        kit_set($name, $value, 'auth_ldap', $changes, "auth_ldap/$name");
    }
    // bind_pw is forced in config.php from its secret file; a copy an admin saved is removed.
    if ($DB->record_exists_select('config_plugins', "plugin = 'auth_ldap' AND name = 'bind_pw' AND value <> ''")) {
        $DB->set_field('config_plugins', 'value', '', ['plugin' => 'auth_ldap', 'name' => 'bind_pw']);
        $changes[] = 'auth_ldap/bind_pw moved to config.php';
    }
}
$sync = \core\task\manager::get_scheduled_task('\auth_ldap\task\sync_task');
if ($sync) {
    $on = !empty($want['ldap']);
    $minute = $on ? $want['ldap']['sync_minute'] : $sync->get_minute();
    $hour = $on ? $want['ldap']['sync_hour'] : $sync->get_hour();
    if ($sync->get_disabled() === $on || $sync->get_minute() !== $minute || $sync->get_hour() !== $hour) {
        $sync->set_disabled(!$on);
        $sync->set_minute($minute);
        $sync->set_hour($hour);
        $sync->set_customised(true);
        \core\task\manager::configure_scheduled_task($sync);
        $changes[] = 'directory sync task ' . ($on ? "every $minute $hour" : 'off');
    }
}

// --- OAuth2 / OpenID Connect issuers, endpoints given (no discovery unless none is) ---
foreach ($want['oauth2'] as $spec) {
    $secret = kit_secret($spec['secret_file']);
    $fields = [
        'name' => $spec['name'], 'clientid' => $spec['clientid'], 'clientsecret' => $secret,
        'baseurl' => $spec['baseurl'], 'image' => $spec['image'], 'loginscopes' => $spec['loginscopes'],
        'loginscopesoffline' => $spec['loginscopesoffline'],
        // \core\oauth2\issuer::LOGINONLY (a button on the login page) or SERVICEONLY.
        'showonloginpage' => $spec['showonloginpage'] ? 2 : 0,
        'alloweddomains' => $spec['alloweddomains'], 'requireconfirmation' => $spec['requireconfirmation'],
    ];
    $issuer = null;
    $moved = false;     // a discovered issuer whose URL changed: its endpoints are discovered again
    foreach (\core\oauth2\api::get_all_issuers(true) as $candidate) {
        if ($candidate->get('name') === $spec['name']) {
            $issuer = $candidate;
        }
    }
    if (!$issuer) {
        // Enabled below, once it has its endpoints.
        $issuer = new \core\oauth2\issuer(0, (object) ($fields + ['enabled' => 0]));
        $issuer->create();
        $changes[] = "issuer {$spec['name']} created";
    } else {
        $dirty = false;
        foreach ($fields as $name => $value) {
            $have = $issuer->get($name);
            if ((string) (is_bool($have) ? (int) $have : $have) !== (string) $value) {
                $issuer->set($name, $value);
                $dirty = true;
                $moved = $moved || $name === 'baseurl';
            }
        }
        if ($dirty) {
            $issuer->update();
            $changes[] = "issuer {$spec['name']} updated";
        }
    }
    $have = [];
    foreach (\core\oauth2\api::get_endpoints($issuer) as $endpoint) {
        $have[$endpoint->get('name')] = $endpoint;
    }
    if (!$spec['endpoints'] && (!$have || $moved)) {
        // A generic OpenID Connect provider: its own discovery document names the endpoints.
        // A provider that does not answer now must not fail the rollout (or a restore): the
        // issuer stays disabled, and the next `kit up` tries again.
        try {
            \core\oauth2\service\custom::discover_endpoints($issuer);
            $changes[] = "issuer {$spec['name']} endpoints discovered";
        } catch (\Throwable $e) {
            echo "kit: warning: issuer {$spec['name']}: discovery at {$spec['baseurl']} failed ("
                . trim(strtok($e->getMessage(), "\n")) . "); it stays disabled until a `kit up` reaches it\n";
        }
    }
    foreach ($spec['endpoints'] as $kind => $url) {
        $name = "{$kind}_endpoint";
        if (!isset($have[$name])) {
            (new \core\oauth2\endpoint(0, (object) ['issuerid' => $issuer->get('id'), 'name' => $name, 'url' => $url]))->create();
            $changes[] = "issuer {$spec['name']} $name";
        } else if ($have[$name]->get('url') !== $url) {
            $have[$name]->set('url', $url);
            $have[$name]->update();
            $changes[] = "issuer {$spec['name']} $name";
        }
    }
    $mapped = [];
    foreach (\core\oauth2\api::get_user_field_mappings($issuer) as $mapping) {
        $mapped[$mapping->get('externalfield')] = $mapping->get('internalfield');
    }
    foreach ($spec['fieldmappings'] as $external => $internal) {
        if (($mapped[$external] ?? null) !== $internal && !in_array($internal, $mapped, true)) {
            (new \core\oauth2\user_field_mapping(0, (object) ['issuerid' => $issuer->get('id'),
                'externalfield' => $external, 'internalfield' => $internal]))->create();
            $changes[] = "issuer {$spec['name']} maps $external";
        }
    }
    $usable = (bool) \core\oauth2\api::get_endpoints($issuer);
    if ((bool) $issuer->get('enabled') !== $usable) {
        $issuer->set('enabled', $usable ? 1 : 0);
        $issuer->update();
        $changes[] = "issuer {$spec['name']} " . ($usable ? 'enabled' : 'disabled (no endpoints)');
    }
}

// --- MFA: site admins need a TOTP code; everyone else passes (the "not an admin" factor) ---
$mfa = $want['mfa'];
$on = $mfa['admins'] === 'totp';
kit_set('enabled', $on ? 1 : 0, 'tool_mfa', $changes, 'mfa ' . ($on ? 'on' : 'off'));
if ($on) {
    kit_set('enabled', 1, 'factor_totp', $changes, 'factor totp');
    kit_set('weight', 100, 'factor_totp', $changes, 'factor totp weight');
    kit_set('enabled', 1, 'factor_admin', $changes, 'factor admin');
    kit_set('weight', 100, 'factor_admin', $changes, 'factor admin weight');
    kit_set('enabled', $mfa['graceperiod'] > 0 ? 1 : 0, 'factor_grace', $changes, 'factor grace');
    kit_set('weight', 100, 'factor_grace', $changes, 'factor grace weight');
    kit_set('graceperiod', $mfa['graceperiod'], 'factor_grace', $changes, 'grace period');
    kit_set('forcesetup', 1, 'factor_grace', $changes, 'grace force setup');
    $order = array_filter(explode(',', (string) get_config('tool_mfa', 'factor_order')));
    foreach (['totp', 'admin', 'grace'] as $factor) {
        if (!in_array($factor, $order, true)) {
            $order[] = $factor;
        }
    }
    kit_set('factor_order', implode(',', $order), 'tool_mfa', $changes, 'factor order');
    // The kit's own admin: its authenticator secret is the kit's (`kit auth mfa` made it).
    $totp = kit_secret('admin_totp_secret');
    $admin = get_admin();
    if ($totp !== '' && $admin && !$DB->record_exists('tool_mfa',
            ['userid' => $admin->id, 'factor' => 'totp', 'secret' => $totp, 'revoked' => 0])) {
        $now = time();
        $DB->insert_record('tool_mfa', (object) ['userid' => $admin->id, 'factor' => 'totp', 'secret' => $totp,
            'label' => 'kit', 'timecreated' => $now, 'createdfromip' => '', 'timemodified' => $now,
            'lastverified' => 0, 'revoked' => 0, 'lockcounter' => 0]);
        $changes[] = "authenticator enrolled for {$admin->username}";
    }
}

if ($changes) {
    echo 'kit: changed: ' . implode(', ', $changes) . "\n";
} else {
    echo "kit: ok\n";
}
