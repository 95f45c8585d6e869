<?php
// Sets a Moodle user's password from the environment (never from the command line):
//   KIT_USERNAME, KIT_NEW_PASSWORD. Also unlocks the account after failed logins.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';
$username = getenv('KIT_USERNAME');
$password = getenv('KIT_NEW_PASSWORD');
if (!$username || !$password) {
    fwrite(STDERR, "kit: KIT_USERNAME and KIT_NEW_PASSWORD must be set\n");
    exit(2);
}
$user = $DB->get_record('user', ['username' => $username, 'mnethostid' => $CFG->mnet_localhost_id, 'deleted' => 0]);
if (!$user) {
    fwrite(STDERR, "kit: no user named {$username}\n");
    exit(3);
}
update_internal_user_password($user, $password);
login_unlock_account($user);
echo "kit: password set for {$username}\n";
