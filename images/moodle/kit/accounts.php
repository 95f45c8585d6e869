<?php
// What the kit asks Moodle about accounts and courses, as JSON on stdout:
//   accounts.php courses          course short names (an import's enrolment columns name them)
//   accounts.php existing KIND    which of the names on stdin exist (users: usernames, courses: short names)
//   accounts.php status           sign-in methods on, users per method, the directory sync's last run
//   accounts.php whois USERNAME   the account's auth method and whether it is suspended
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';

$mode = $argv[1] ?? '';
$out = [];
if ($mode === 'courses') {
    $out = array_values($DB->get_fieldset_select('course', 'shortname', 'id <> ?', [SITEID]));
} else if ($mode === 'existing') {
    $names = array_values(array_filter(array_map('trim', explode("\n", stream_get_contents(STDIN)))));
    [$table, $field] = ($argv[2] ?? '') === 'courses' ? ['course', 'shortname'] : ['user', 'username'];
    $extra = $table === 'user' ? ' AND deleted = 0 AND mnethostid = ' . (int) $CFG->mnet_localhost_id : '';
    foreach (array_chunk($names, 1000) as $chunk) {
        [$in, $params] = $DB->get_in_or_equal($chunk);
        $out = array_merge($out, $DB->get_fieldset_select($table, $field, "$field $in$extra", $params));
    }
} else if ($mode === 'status') {
    $sync = \core\task\manager::get_scheduled_task('\auth_ldap\task\sync_task');
    $out = [
        'enabled' => array_values(array_filter(explode(',', (string) get_config('core', 'auth')))),
        'users' => array_map('intval', $DB->get_records_sql_menu(
            "SELECT auth, COUNT(1) FROM {user} WHERE deleted = 0 AND username <> 'guest' GROUP BY auth")),
        'suspended' => $DB->count_records('user', ['deleted' => 0, 'suspended' => 1]),
        'ldap_sync' => $sync ? ['disabled' => $sync->get_disabled(), 'lastrun' => (int) $sync->get_last_run_time(),
                                'faildelay' => (int) $sync->get_fail_delay()] : null,
        'issuers' => array_map(fn($i) => ['name' => $i->get('name'), 'enabled' => (bool) $i->get('enabled')],
                               array_values(\core\oauth2\api::get_all_issuers(true))),
        'mfa' => (bool) get_config('tool_mfa', 'enabled'),
        'lockout' => (int) ($CFG->lockoutthreshold ?? 0),
    ];
} else if ($mode === 'whois') {
    $user = $DB->get_record('user', ['username' => $argv[2] ?? '', 'deleted' => 0,
                                     'mnethostid' => $CFG->mnet_localhost_id], 'id, auth, suspended, firstname, lastname, email');
    $out = $user ? ['auth' => $user->auth, 'suspended' => (bool) $user->suspended, 'firstname' => $user->firstname,
                    'lastname' => $user->lastname, 'email' => $user->email,
                    'locked' => (bool) get_user_preferences('login_lockout', false, $user->id)] : null;
} else {
    fwrite(STDERR, "usage: accounts.php courses|existing users|courses|status|whois USERNAME\n");
    exit(2);
}
echo json_encode($out) . "\n";
