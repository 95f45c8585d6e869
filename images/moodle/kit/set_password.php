<?php
// Sets a Moodle user's password, read from stdin (never from the command line or the
// environment): the user name on the first line, the password on the second. Also
// unlocks the account after failed logins.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';
$username = trim((string) fgets(STDIN));
$password = rtrim((string) fgets(STDIN), "\r\n");
if ($username === '' || $password === '') {
    fwrite(STDERR, "kit: give the user name and the password on stdin, one per line\n");
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
